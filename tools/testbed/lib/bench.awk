# The benchmark table of tools/bench (README "Benchmarks"). Reads, in this order:
#   TARGETS file: "SCENARIO METRIC OP RATIO" lines from the `# tb-bench-target:` headers,
#   STATUS file:  "SCENARIO STATUS" lines (pass/fail/skipped/timeout/missing),
#   markers.log:  "@@TB value SCENARIO bench/METRIC/VMM VALUE" samples.
# Variables: want (the bench scenarios, space separated, in table order), tsv (a file the
# machine-readable rows are appended to).
# Prints the table; the last line is "BENCH: N metrics, M targets met, K NOT MET, J no data".
# Samples of viaduct-noseccomp (viaduct with --seccomp false, tools/bench --seccomp-cost) go
# into a second table before that line: viaduct (filters on) against them.
function median(s, m,   n, i, j, v, a) {
    n = cnt[s, m]
    for (i = 1; i <= n; i++) a[i] = sample[s, m, i]
    for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
    if (n % 2) return a[(n + 1) / 2]
    return (a[n / 2] + a[n / 2 + 1]) / 2
}
function num(v) { return (v == int(v)) ? sprintf("%d", v) : sprintf("%.2f", v) }
FILENAME == ARGV[1] { tgt_op[$1, $2] = $3; tgt_r[$1, $2] = $4; addmetric($1, $2); next }
FILENAME == ARGV[2] { status[$1] = $2; next }
{ sub(/\r$/, "") }
$1 == "@@TB" && $2 == "value" && $4 ~ /^bench\// {
    split($4, k, "/")
    if (k[3] != "viaduct" && k[3] != "qemu" && k[3] != "viaduct-noseccomp") next
    if (k[3] != "viaduct-noseccomp") addmetric($3, k[2])
    c = ++cnt[$3 "/" k[3], k[2]]
    sample[$3 "/" k[3], k[2], c] = $5 + 0
}
function addmetric(s, m) {
    if ((s, m) in known) return
    known[s, m] = 1; metrics[s] = metrics[s] " " m
}
BEGIN { ns = split(want, sorder, " ") }
END {
    printf "%-16s %-22s %14s %14s %7s %8s  %s\n", "scenario", "metric", "viaduct", "qemu", "ratio", "target", "verdict"
    nmet = nnot = nnod = nm = 0
    for (i = 1; i <= ns; i++) {
        s = sorder[i]
        nk = split(metrics[s], ms, " ")
        if (nk == 0) { printf "%-16s (no bench/ values: scenario %s)\n", s, status[s] ? status[s] : "missing"; continue }
        for (j = 1; j <= nk; j++) {
            m = ms[j]; nm++
            v = q = ratio = ""
            if (cnt[s "/viaduct", m]) v = median(s "/viaduct", m)
            if (cnt[s "/qemu", m]) q = median(s "/qemu", m)
            if (v != "" && q != "" && q != 0) ratio = sprintf("%.2f", v / q)
            tg = verdict = ""
            if ((s, m) in tgt_op) {
                tg = tgt_op[s, m] " " tgt_r[s, m]
                if (ratio == "") { verdict = "no data"; nnod++ }
                else if ((tgt_op[s, m] == "<=" && v / q <= tgt_r[s, m] + 0) || (tgt_op[s, m] == ">=" && v / q >= tgt_r[s, m] + 0)) { verdict = "met"; nmet++ }
                else { verdict = "NOT MET"; nnot++ }
            }
            vs = (v == "") ? "-" : num(v) " (n=" cnt[s "/viaduct", m] ")"
            qs = (q == "") ? "-" : num(q) " (n=" cnt[s "/qemu", m] ")"
            printf "%-16s %-22s %14s %14s %7s %8s  %s\n", s, m, vs, qs, (ratio == "" ? "-" : ratio), (tg == "" ? "-" : tg), verdict
            if (tsv != "")
                printf "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", s, m, v, q, cnt[s "/viaduct", m], cnt[s "/qemu", m], ratio, tg, verdict >> tsv
        }
        if (status[s] != "" && status[s] != "pass")
            printf "%-16s !!! scenario status %s: these numbers are suspect (see its log)\n", s, toupper(status[s])
    }
    nsec = 0
    for (i = 1; i <= ns; i++) {
        s = sorder[i]
        nk = split(metrics[s], ms, " ")
        for (j = 1; j <= nk; j++) {
            m = ms[j]
            if (!cnt[s "/viaduct-noseccomp", m] || !cnt[s "/viaduct", m]) continue
            if (!nsec++) {
                print ""
                print "=== seccomp's cost: viaduct with --seccomp true (default) vs false, same level-1 boot (ratio = on/off, medians)"
                printf "%-16s %-22s %14s %14s %7s\n", "scenario", "metric", "seccomp on", "seccomp off", "ratio"
            }
            v = median(s "/viaduct", m); q = median(s "/viaduct-noseccomp", m)
            printf "%-16s %-22s %14s %14s %7s\n", s, m, num(v) " (n=" cnt[s "/viaduct", m] ")",
                num(q) " (n=" cnt[s "/viaduct-noseccomp", m] ")", (q != 0 ? sprintf("%.2f", v / q) : "-")
        }
    }
    if (nsec) print ""
    printf "BENCH: %d metrics, %d targets met, %d NOT MET, %d no data\n", nm, nmet, nnot, nnod
}

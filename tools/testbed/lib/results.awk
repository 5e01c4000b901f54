# Turns the L1 marker log into results.json. Variables: out (output dir), want (space
# separated scenario names expected in this run), global_timeout (seconds, set when the L0
# QEMU was killed by run's global timeout), flakes (the known-flake list, KIND WHERE WHY
# lines: retries, and skipped checks as KIND skip), budget (retries allowed in one run),
# kernel (this run's level-1 kernel: a scenario NAME@K for another kernel K ran in out/l1-K,
# which holds its log and disk images); booted/finished are derived here. fmt=text: the
# human summary instead.
# Input lines: "@@TB KIND ..." (see tools/testbed/README.md); anything else is ignored.
# known_flake(KIND, WHERE): the WHY of the first known-flake line that allows it, or "".
function known_flake(kind, where,   i) {
    for (i = 1; i <= nflakes; i++)
        if (fkind[i] == kind && where ~ fwhere[i]) return fwhy[i]
    return ""
}
function esc(s,   n, i, parts, r) {
    # Backslashes by split/join: gsub's replacement-string escapes differ between awks.
    n = split(s, parts, /\\/); r = parts[1]
    for (i = 2; i <= n; i++) r = r "\\\\" parts[i]
    s = r
    gsub(/"/, "\\\"", s); gsub(/\t/, " ", s)
    gsub(/[\001-\037]/, "", s)
    return s
}
function rest(from,   i, s) {
    s = ""
    for (i = from; i <= NF; i++) s = s (i > from ? " " : "") $i
    return s
}
# glob_re(G): an anchored regex for the glob G ('*' matches any text).
function glob_re(g,   r) {
    r = g
    gsub(/[][\\^$.|?+(){}]/, "\\\\&", r)
    gsub(/\*/, ".*", r)
    return "^" r "$"
}
BEGIN {
    nscen = split(want, order, " ")
    # The known-flake list: "KIND WHERE WHY...", comments and blank lines skipped.
    nflakes = 0
    if (flakes != "")
        while ((getline line < flakes) > 0) {
            if (line ~ /^[ \t]*(#|$)/) continue
            n = split(line, f, /[ \t]+/)
            if (n < 3) continue
            nflakes++; fkind[nflakes] = f[1]; fwhere[nflakes] = glob_re(f[2])
            why = line; sub(/^[ \t]*[^ \t]+[ \t]+[^ \t]+[ \t]+/, "", why); fwhy[nflakes] = why
        }
    if (budget == "") budget = 2
}
{ sub(/\r$/, "") }
$1 != "@@TB" { next }
$2 == "boot" { booted = 1; for (i = 3; i <= NF; i++) { split($i, kv, "="); bootinfo[kv[1]] = kv[2] } next }
$2 == "finished" { finished = 1; next }
$2 == "begin" { began[$3] = 1; if (!($3 in known)) { known[$3] = 1; if (!inwant($3)) order[++nscen] = $3 } next }
$2 == "end" {
    ended[$3] = 1
    for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "rc") rc[$3] = kv[2]; if (kv[1] == "ms") ms[$3] = kv[2] }
    next
}
$2 == "timeout" { timedout[$3] = $4; next }
$2 == "skip" { skipped[$3] = rest(4); next }
$2 == "check" {
    s = $3; n = ++nchecks[s]
    cname[s, n] = $4; cstat[s, n] = $5; cdet[s, n] = rest(6)
    if ($5 == "fail") nfail[s]++
    # A skipped check is never a pass: allowed only when the known-flake list names it.
    if ($5 == "skip") { cknown[s, n] = known_flake("skip", s "/" $4); if (cknown[s, n] == "") nunknown_skip++ }
    next
}
$2 == "retry" {
    nretry++; rscen[nretry] = $3; rkind[nretry] = $4; rwhere[nretry] = $5; rreason[nretry] = rest(6)
    rknown[nretry] = known_flake($4, $5)
    if (rknown[nretry] == "") nunknown++
    next
}
$2 == "value" { s = $3; k = $4; if (!((s, k) in val)) vkeys[s] = vkeys[s] SUBSEP k; val[s, k] = rest(5); next }
function sdir(s,   k) {
    k = s; if (!sub(/^[^@]*@/, "", k) || k == kernel) return out
    return out "/l1-" k
}
function inwant(n,   i) { for (i = 1; i <= nscen; i++) if (order[i] == n) return 1; return 0 }
function status(s) {
    if (!(s in began)) return "missing"
    if (s in timedout) return "timeout"
    if (!(s in ended)) return global_timeout ? "timeout" : "missing"
    if (nfail[s] > 0) return "fail"
    if (s in skipped) return "skipped"
    if (rc[s] != 0) return "fail"
    if (nchecks[s] == 0) return "fail"
    return "pass"
}
function reason(s) {
    if (!(s in began)) return booted ? "scenario never started (L1 stopped early?)" : "level 1 never reached its init"
    if (s in timedout) return "timed out after " timedout[s] " s in L1"
    if (!(s in ended) && global_timeout) return "still running when level 1 hit the global timeout (" global_timeout " s)"
    if (!(s in ended)) return "scenario did not end (level 1 crashed?)"
    if (nfail[s] > 0) return nfail[s] " check(s) failed"
    if (s in skipped) return "skipped: " skipped[s]
    if (rc[s] != 0) return "scenario script exited rc=" rc[s]
    if (nchecks[s] == 0) return "scenario emitted no checks"
    return ""
}
# Retries fail the run when one is not a known flake or when there are more than the budget.
function retries_ok() { return nunknown == 0 && nretry <= budget }
# Skipped checks fail the run when one is not in the known-flake list.
function skips_ok() { return nunknown_skip == 0 }
END {
    if (fmt == "text") { text(); exit }
    printf "{\n  \"out_dir\": \"%s\",\n  \"console_log\": \"%s/console.log\",\n", esc(out), esc(out)
    printf "  \"booted\": %s,\n  \"finished\": %s,\n", booted ? "true" : "false", finished ? "true" : "false"
    printf "  \"l1_boot_uptime\": \"%s\",\n", esc(bootinfo["uptime"])
    printf "  \"retry_budget\": %d,\n  \"retries_ok\": %s,\n  \"retries\": [", budget, retries_ok() ? "true" : "false"
    for (n = 1; n <= nretry; n++)
        printf "%s\n    {\"scenario\": \"%s\", \"kind\": \"%s\", \"where\": \"%s\", \"reason\": \"%s\", \"known\": %s}", \
            (n > 1 ? "," : ""), esc(rscen[n]), esc(rkind[n]), esc(rwhere[n]), esc(rreason[n]), \
            (rknown[n] == "" ? "null" : "\"" esc(rknown[n]) "\"")
    printf "%s],\n  \"skips_ok\": %s,\n  \"scenarios\": {", (nretry ? "\n  " : ""), skips_ok() ? "true" : "false"
    for (i = 1; i <= nscen; i++) {
        s = order[i]
        printf "%s\n    \"%s\": {\n", (i > 1 ? "," : ""), esc(s)
        printf "      \"status\": \"%s\",\n      \"reason\": \"%s\",\n", status(s), esc(reason(s))
        printf "      \"rc\": %s,\n      \"ms\": %s,\n", (s in rc ? rc[s] + 0 : "null"), (s in ms ? ms[s] + 0 : "null")
        printf "      \"out_dir\": \"%s\",\n", esc(sdir(s))
        printf "      \"log\": \"%s/scenarios/%s.log\",\n      \"checks\": [", esc(sdir(s)), esc(s)
        for (n = 1; n <= nchecks[s]; n++)
            printf "%s\n        {\"name\": \"%s\", \"status\": \"%s\", \"detail\": \"%s\"%s}", (n > 1 ? "," : ""), esc(cname[s, n]), esc(cstat[s, n]), esc(cdet[s, n]), \
                (cstat[s, n] != "skip" ? "" : ", \"known\": " (cknown[s, n] == "" ? "null" : "\"" esc(cknown[s, n]) "\""))
        printf "%s],\n      \"values\": {", (nchecks[s] ? "\n      " : "")
        nk = split(substr(vkeys[s], 2), ks, SUBSEP)
        for (n = 1; n <= nk; n++)
            printf "%s\n        \"%s\": \"%s\"", (n > 1 ? "," : ""), esc(ks[n]), esc(val[s, ks[n]])
        printf "%s}\n    }", (nk ? "\n      " : "")
    }
    printf "\n  }\n}\n"
}
# A skipped check is not a pass either: each one printed with its known-flake line.
function skipped_checks(s,   n) {
    for (n = 1; n <= nchecks[s]; n++) {
        if (cstat[s, n] != "skip") continue
        nskc++; printf "           SKIPPED check %s/%s: %s\n", s, cname[s, n], cdet[s, n]
        if (cknown[s, n] != "") printf "           known skip: %s\n", cknown[s, n]
        else printf "           NOT a known skip (tools/testbed/known-flakes): this fails the run\n"
    }
}
# The human summary (fmt=text): one line per scenario, failing checks named with the log.
function text(   i, s, st, n, line, fails) {
    np = nf = nsk = nskc = 0
    printf "testbed results: %s\n", out
    if (!booted) printf "  level 1 never reached its init: see %s/console.log\n", out
    for (i = 1; i <= nscen; i++) {
        s = order[i]; st = status(s)
        if (st == "pass") {
            np++; printf "  PASS     %-26s %d checks, %.1f s\n", s, nchecks[s], ms[s] / 1000
            skipped_checks(s)
            continue
        }
        if (st == "skipped") { nsk++; printf "  SKIPPED  %-26s %s\n", s, skipped[s]; skipped_checks(s); continue }
        nf++
        printf "  %-8s %-26s %s%s; log: %s/scenarios/%s.log\n", toupper(st), s, reason(s), (s in ms ? sprintf(" (%.1f s)", ms[s] / 1000) : ""), sdir(s), s
        for (n = 1; n <= nchecks[s]; n++)
            if (cstat[s, n] == "fail") printf "           failed check %s/%s: %s\n", s, cname[s, n], cdet[s, n]
    }
    # Every retry, with its reason and whether the known-flake list allows it.
    for (n = 1; n <= nretry; n++) {
        printf "  RETRY    %-26s %s at %s: %s\n", rscen[n], rkind[n], rwhere[n], rreason[n]
        if (rknown[n] != "") printf "           known flake: %s\n", rknown[n]
        else printf "           NOT a known flake (tools/testbed/known-flakes): this fails the run\n"
    }
    printf "RETRIES: %d (budget %d)%s%s\n", nretry, budget, (nretry > budget ? ", OVER BUDGET: this fails the run" : ""), \
        (nunknown ? sprintf(", %d not in the known-flake list", nunknown) : "")
    printf "RESULT: %d passed, %d failed, %d SKIPPED%s%s (%s)\n", np, nf, nsk, (nskc ? sprintf(", %d check(s) SKIPPED", nskc) : ""), \
        (nretry ? sprintf(", %d retried", nretry) : ""), (nf || !retries_ok() || !skips_ok() ? "FAIL" : "ok")
}

//! Benchmark (not a test): viaduct vs QEMU booting the same kernel and initramfs in the same
//! level-1 boot of the testbed (scenario boot-bench). Prints, per VMM, the time from VMM start
//! to the guest's init and the memory overhead, and viaduct/QEMU ratios.
//!
//!     cargo bench -p viaduct --features testbed --bench boot
//!
//! Overhead is reported two ways: the issue's definition, peak RSS (VmHWM) minus guest RAM
//! (negative when the guest touched less than all its RAM, as a short boot does), and the peak
//! RSS outside the guest-RAM mapping, which measures the VMM itself.

#[path = "../tests/common/mod.rs"]
mod common;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Numbers {
    init_ms: f64,
    hwm_overhead_kb: f64,
    nonram_kb: f64,
}

fn collect(s: &common::Scenario, vmm: &str, guest_ram_kb: f64) -> Numbers {
    let runs: Vec<String> = s
        .values
        .keys()
        .filter_map(|k| k.strip_suffix("/init_ms"))
        .filter(|run| run.starts_with(&format!("{vmm}-r")))
        .map(String::from)
        .collect();
    let get = |run: &str, key: &str| s.value_u64(&format!("{run}/{key}")).map(|v| v as f64).ok();
    let pick = |key: &str| median(runs.iter().filter_map(|r| get(r, key)).collect());
    Numbers {
        init_ms: pick("init_ms"),
        hwm_overhead_kb: pick("peak_rss_kb") - guest_ram_kb,
        nonram_kb: pick("nonram_rss_kb"),
    }
}

fn main() {
    let s = match common::scenario("boot-bench") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("boot-bench: no results: {e:#}");
            std::process::exit(1);
        }
    };
    let guest_ram_kb = s.value_u64("guest_ram_kb").map(|v| v as f64).unwrap_or(f64::NAN);
    let v = collect(&s, "viaduct", guest_ram_kb);
    let q = collect(&s, "qemu", guest_ram_kb);
    println!("boot-bench (median of rounds, 1 vCPU, {} MiB guest, same L1 boot)", guest_ram_kb / 1024.0);
    println!("{:<34} {:>12} {:>12} {:>8}", "", "viaduct", "QEMU", "ratio");
    let row = |name: &str, a: f64, b: f64, unit: &str| {
        println!("{:<34} {:>10.0}{unit} {:>10.0}{unit} {:>8.2}", name, a, b, a / b);
    };
    row("VMM start to guest init", v.init_ms, q.init_ms, "ms");
    row("peak RSS - guest RAM", v.hwm_overhead_kb, q.hwm_overhead_kb, "kB");
    row("peak RSS outside guest RAM", v.nonram_kb, q.nonram_kb, "kB");
    println!("targets: time ratio <= 0.50, overhead ratio <= 0.25; log: {}", s.log.display());
}

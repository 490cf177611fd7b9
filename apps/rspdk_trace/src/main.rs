//! `rspdk_trace`: prints the events of an rspdk app's trace file the way
//! SPDK's `spdk_trace` does (same flags: `-s` app name with `-p` pid or
//! `-i` shm id, or `-f` file; `-c` one core; `-t` ticks), and exports them
//! for Perfetto (`--export perfetto FILE`: Chrome's JSON trace format, which
//! ui.perfetto.dev and chrome://tracing open; one track per core and one
//! span per object, e.g. an I/O from its start to its last event).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::{json, Value};

use rspdk_trace::{Event, Trace};
use rspdk_util::outln;

#[derive(Parser)]
#[command(
    name = "rspdk_trace",
    about = "Print or export an rspdk app's tracepoint events"
)]
struct Cli {
    /// App name of the trace file (`/dev/shm/<NAME>_trace.pid<PID>`).
    #[arg(short = 's', value_name = "NAME")]
    app: Option<String>,
    /// Pid of the app (with -s).
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<u32>,
    /// Shared memory id the app was started with (`-i`; with -s).
    #[arg(short = 'i', value_name = "ID")]
    shm_id: Option<i32>,
    /// The trace file itself.
    #[arg(short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Only this core's events.
    #[arg(short = 'c', value_name = "CORE")]
    core: Option<u32>,
    /// Also print each event's tick offset.
    #[arg(short = 't')]
    ticks: bool,
    /// Write the events in another format instead of printing them.
    #[arg(long = "export", value_names = ["FORMAT", "FILE"], num_args = 2)]
    export: Option<Vec<String>>,
}

fn trace_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(f) = &cli.file {
        return Ok(f.clone());
    }
    let Some(app) = &cli.app else {
        return Err("name the trace: -f FILE, or -s APP with -p PID or -i SHM_ID".into());
    };
    let name = match (cli.pid, cli.shm_id) {
        (Some(pid), None) => format!("{app}_trace.pid{pid}"),
        (None, Some(id)) => format!("{app}_trace.{id}"),
        (None, None) => return Err(format!("-s {app} needs -p PID or -i SHM_ID")),
        (Some(_), Some(_)) => return Err("give -p or -i, not both".into()),
    };
    Ok(PathBuf::from("/dev/shm").join(name))
}

/// Each object's number (per object type, in order of first appearance)
/// and start tick, tracked as events are walked in time order.
#[derive(Default)]
struct Objects {
    next: HashMap<u8, u64>,
    live: HashMap<(u8, u64), (u64, u64)>,
}

impl Objects {
    /// The object an event is about: (number, start tick).
    fn see(&mut self, t: &Trace, e: &Event) -> Option<(u8, u64, u64)> {
        let d = t.tpoint(e.tpoint)?;
        if d.object_type == 0 {
            return None;
        }
        let key = (d.object_type, e.object_id);
        if d.new_object {
            let n = self.next.entry(d.object_type).or_insert(0);
            self.live.insert(key, (*n, e.tsc));
            *n += 1;
        }
        let (n, start) = *self.live.get(&key)?;
        Some((d.object_type, n, start))
    }
}

fn prefix(t: &Trace, object_type: u8) -> char {
    t.objects.get(object_type as usize).map_or('?', |o| o.1)
}

fn print(t: &Trace, cli: &Cli) {
    let us = |ticks: u64| ticks as f64 * 1e6 / t.tick_rate as f64;
    let first = t.events.first().map_or(0, |e| e.tsc);
    let mut objects = Objects::default();
    for (core, (written, lost)) in t.ring_counts.iter().enumerate() {
        if *lost > 0 && cli.core.is_none_or(|c| c == core as u32) {
            outln!("# core {core}: {written} events written, the oldest {lost} overwritten (run rspdk_trace sooner, or start the app with more --num-trace-entries)");
        }
    }
    for e in &t.events {
        let obj = objects.see(t, e);
        if cli.core.is_some_and(|c| c != e.core) {
            continue;
        }
        let mut line = format!("{:2}: {:12.3} ", e.core, us(e.tsc - first));
        if cli.ticks {
            line.push_str(&format!("({:>12}) ", e.tsc - first));
        }
        let Some(d) = t.tpoint(e.tpoint) else {
            line.push_str(&format!("tpoint {:#06x} (no description)", e.tpoint));
            outln!("{line}");
            continue;
        };
        line.push_str(&format!("{:<24} ", d.name));
        match obj {
            Some((ty, n, start)) => {
                line.push_str(&format!("id:    {:<10}", format!("{}{n}", prefix(t, ty))));
                if !d.new_object {
                    line.push_str(&format!("time: {:<12.3}", us(e.tsc - start)));
                }
            }
            None if d.object_type != 0 => line.push_str(&format!("object: {:#x} ", e.object_id)),
            None => {}
        }
        for (name, v) in d.args.iter().zip(e.args.iter()) {
            line.push_str(&format!("{name}: {v} "));
        }
        outln!("{}", line.trim_end());
    }
}

/// One object's span: from its first event to its last.
struct Span {
    /// (object type, number).
    object: (u8, u64),
    /// Name of its first event.
    name: String,
    start: f64,
    end: f64,
    core: u32,
}

/// Chrome's JSON trace format (Perfetto opens it): an instant per event on
/// its core's track, and an async span per object from its first event to
/// its last.
fn perfetto(t: &Trace) -> Value {
    let us = |ticks: u64| ticks as f64 * 1e6 / t.tick_rate as f64;
    let first = t.events.first().map_or(0, |e| e.tsc);
    let pid = t.pid;
    let mut out = Vec::new();
    for core in 0..t.ring_counts.len() {
        out.push(
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": core,
                        "args": {"name": format!("core {core}")}}),
        );
    }
    let mut objects = Objects::default();
    let mut spans: Vec<Span> = Vec::new();
    let mut span_of: HashMap<(u8, u64), usize> = HashMap::new();
    for e in &t.events {
        let obj = objects.see(t, e);
        let name = t
            .tpoint(e.tpoint)
            .map_or_else(|| format!("{:#06x}", e.tpoint), |d| d.name.clone());
        let ts = us(e.tsc - first);
        let args: serde_json::Map<String, Value> = t
            .tpoint(e.tpoint)
            .map(|d| {
                d.args
                    .iter()
                    .zip(e.args.iter())
                    .map(|(n, v)| (n.clone(), json!(v)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(json!({"ph": "i", "s": "t", "name": name, "pid": pid, "tid": e.core, "ts": ts, "args": args}));
        if let Some((ty, n, _)) = obj {
            match span_of.get(&(ty, n)) {
                Some(&i) => spans[i].end = ts,
                None => {
                    span_of.insert((ty, n), spans.len());
                    spans.push(Span {
                        object: (ty, n),
                        name: name.clone(),
                        start: ts,
                        end: ts,
                        core: e.core,
                    });
                }
            }
        }
    }
    for Span {
        object: (ty, n),
        name,
        start,
        end,
        core,
    } in spans
    {
        let cat = t
            .objects
            .get(ty as usize)
            .map_or_else(String::new, |o| o.0.clone());
        let id = format!("{}{n}", prefix(t, ty));
        out.push(json!({"ph": "b", "cat": cat, "id": id, "name": name, "pid": pid, "tid": core, "ts": start}));
        out.push(json!({"ph": "e", "cat": cat, "id": id, "name": name, "pid": pid, "tid": core, "ts": end}));
    }
    json!({"traceEvents": out, "displayTimeUnit": "ns",
           "metadata": {"app": t.app_name, "pid": pid}})
}

fn run(cli: &Cli) -> Result<(), String> {
    let path = trace_path(cli)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = Trace::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    match &cli.export {
        None => print(&t, cli),
        Some(v) => {
            let (format, file) = (&v[0], &v[1]);
            if format != "perfetto" {
                return Err(format!("--export {format}: the export format is perfetto"));
            }
            let text = serde_json::to_string(&perfetto(&t)).map_err(|e| e.to_string())?;
            std::fs::write(file, text).map_err(|e| format!("{file}: {e}"))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rspdk_trace: {e}");
            ExitCode::FAILURE
        }
    }
}

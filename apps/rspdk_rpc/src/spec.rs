//! The declarative description of a subcommand ([`MethodSpec`], one per
//! RPC, built from a few chained calls) and its translation to clap
//! arguments and to JSON params.

use clap::builder::PossibleValuesParser;
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use serde_json::{json, Map, Value};

use rspdk_rpc::DEFAULT_SOCKET_PATH;

use crate::CliError;
use crate::Ctx;

/// How a result is printed; rpc.py's `print_dict`, `print_json`, or nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// `json.dumps(result, indent=2)`.
    Json,
    /// Like `Json` with surrounding quotes stripped (rpc.py's `print_json`).
    JsonUnquoted,
    /// Methods whose rpc.py function prints nothing (e.g. returning `true`).
    Nothing,
    /// rpc.py's `print_array`: the elements separated by spaces.
    Array,
}

/// Type of an argument's value.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Str,
    Int,
    /// An integer given in hex (rpc.py's `int(x, 16)`), e.g. a mask.
    Hex,
    #[allow(
        dead_code,
        reason = "first used by later methods (e.g. timeouts in seconds)"
    )]
    Float,
    /// argparse `store_true`: `true` if given, else the default.
    Flag,
    /// argparse `BooleanOptionalAction`: `--x` / `--no-x`, else the default.
    BoolOptional,
}

pub(crate) struct ArgSpec {
    /// JSON param name (and clap id); rpc.py's `dest`.
    pub(crate) key: &'static str,
    pub(crate) long: Option<&'static str>,
    pub(crate) short: Option<char>,
    pub(crate) kind: Kind,
    pub(crate) required: bool,
    pub(crate) help: &'static str,
    pub(crate) choices: &'static [&'static str],
    /// Sent when the argument is absent (rpc.py drops `None` values).
    pub(crate) default: Option<Value>,
}

/// Custom behaviour for a subcommand: gets the collected params.
pub(crate) type Runner = fn(&mut Ctx, &ArgMatches, Map<String, Value>) -> Result<(), CliError>;

pub(crate) struct MethodSpec {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) args: Vec<ArgSpec>,
    pub(crate) output: Output,
    pub(crate) runner: Option<Runner>,
}

pub(crate) fn method(name: &'static str, help: &'static str) -> MethodSpec {
    MethodSpec {
        name,
        help,
        args: Vec::new(),
        output: Output::Json,
        runner: None,
    }
}

impl MethodSpec {
    pub(crate) fn arg(mut self, spec: ArgSpec) -> Self {
        self.args.push(spec);
        self
    }

    /// Required positional argument.
    pub(crate) fn pos(self, key: &'static str, kind: Kind, help: &'static str) -> Self {
        self.arg(ArgSpec {
            key,
            long: None,
            short: None,
            kind,
            required: true,
            help,
            choices: &[],
            default: None,
        })
    }

    /// Required positional argument restricted to `choices`.
    pub(crate) fn pos_choice(
        self,
        key: &'static str,
        choices: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        let mut this = self.pos(key, Kind::Str, help);
        if let Some(last) = this.args.last_mut() {
            last.choices = choices;
        }
        this
    }

    /// `-s/--long-name VALUE`; the JSON key is the long name with `_`.
    pub(crate) fn opt(
        self,
        short: Option<char>,
        long: &'static str,
        kind: Kind,
        help: &'static str,
    ) -> Self {
        let key: &'static str = Box::leak(long.replace('-', "_").into_boxed_str());
        self.arg(ArgSpec {
            key,
            long: Some(long),
            short,
            kind,
            required: false,
            help,
            choices: &[],
            default: match kind {
                Kind::Flag | Kind::BoolOptional => Some(Value::Bool(false)),
                _ => None,
            },
        })
    }

    /// Optional positional argument.
    pub(crate) fn pos_opt(self, key: &'static str, kind: Kind, help: &'static str) -> Self {
        let mut this = self.pos(key, kind, help);
        if let Some(last) = this.args.last_mut() {
            last.required = false;
        }
        this
    }

    /// A required `-s/--long VALUE` option.
    pub(crate) fn req(
        self,
        short: Option<char>,
        long: &'static str,
        kind: Kind,
        help: &'static str,
    ) -> Self {
        let mut this = self.opt(short, long, kind, help);
        if let Some(last) = this.args.last_mut() {
            last.required = true;
        }
        this
    }

    /// Override the JSON key of the last argument (rpc.py's `dest` differs
    /// from the flag, e.g. `--nine-nine-read-latency` → `p99_read_latency`).
    pub(crate) fn key(mut self, key: &'static str) -> Self {
        if let Some(last) = self.args.last_mut() {
            last.key = key;
        }
        self
    }

    /// Override the default of the last argument.
    pub(crate) fn default(mut self, value: Value) -> Self {
        if let Some(last) = self.args.last_mut() {
            last.default = Some(value);
        }
        self
    }

    pub(crate) fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    pub(crate) fn runner(mut self, runner: Runner) -> Self {
        self.runner = Some(runner);
        self
    }
}

pub(crate) const LOG_LEVELS: &[&str] = &["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"];
pub(crate) const SIGNALS: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1",
];
pub(crate) const INDENT_HELP: &str =
    "Indent level. Value less than 0 mean compact mode. Default indent level is 2.";
pub(crate) const WITH_BATCHES_HELP: &str =
    "Keep batch arrays in output; --no-with-batches flattens them (default)";

pub(crate) fn build_arg(spec: &ArgSpec) -> Vec<Arg> {
    let mut arg = Arg::new(spec.key).help(spec.help);
    if let Some(long) = spec.long {
        arg = arg.long(long);
    }
    if let Some(short) = spec.short {
        arg = arg.short(short);
    }
    match spec.kind {
        Kind::Flag => return vec![arg.action(ArgAction::SetTrue)],
        Kind::BoolOptional => {
            let long = spec.long.unwrap_or(spec.key);
            let negated: &'static str = Box::leak(format!("no-{long}").into_boxed_str());
            return vec![
                arg.action(ArgAction::SetTrue).overrides_with(negated),
                Arg::new(negated)
                    .long(negated)
                    .action(ArgAction::SetTrue)
                    .overrides_with(spec.key)
                    .hide(true),
            ];
        }
        Kind::Str if !spec.choices.is_empty() => {
            arg = arg.value_parser(PossibleValuesParser::new(spec.choices.iter().copied()));
        }
        Kind::Str => arg = arg.value_parser(value_parser!(String)),
        Kind::Int => {
            arg = arg
                .value_parser(value_parser!(i64))
                .allow_negative_numbers(true)
        }
        Kind::Hex => arg = arg.value_parser(parse_hex),
        Kind::Float => arg = arg.value_parser(value_parser!(f64)),
    }
    vec![arg.required(spec.required).action(ArgAction::Set)]
}

/// Turn parsed arguments into JSON params (rpc.py: `remove_null(kwargs)`).
pub(crate) fn collect_params(spec: &MethodSpec, matches: &ArgMatches) -> Map<String, Value> {
    let mut params = Map::new();
    for arg in &spec.args {
        let value = match arg.kind {
            Kind::Flag => matches.get_flag(arg.key).then_some(Value::Bool(true)),
            Kind::BoolOptional => {
                let negated = format!("no-{}", arg.long.unwrap_or(arg.key));
                if matches.get_flag(arg.key) {
                    Some(Value::Bool(true))
                } else if matches.get_flag(&negated) {
                    Some(Value::Bool(false))
                } else {
                    None
                }
            }
            Kind::Str => matches.get_one::<String>(arg.key).map(|s| json!(s)),
            Kind::Int => matches.get_one::<i64>(arg.key).map(|n| json!(n)),
            Kind::Hex => matches.get_one::<u64>(arg.key).map(|n| json!(n)),
            Kind::Float => matches.get_one::<f64>(arg.key).map(|n| json!(n)),
        };
        if let Some(value) = value.or_else(|| arg.default.clone()) {
            params.insert(arg.key.to_string(), value);
        }
    }
    params
}

pub(crate) fn build_cli(table: &[MethodSpec]) -> Command {
    let mut cli = Command::new("rspdk_rpc")
        .about("rspdk RPC command line interface (compatible with SPDK's rpc.py)")
        .subcommand_required(true)
        .arg(Arg::new("server_addr").short('s').long("server-addr").default_value(DEFAULT_SOCKET_PATH).help("RPC domain socket path or IP address"))
        .arg(Arg::new("port").short('p').default_value("5260").value_parser(value_parser!(u16)).help("RPC port number (if server_addr is IP address)"))
        .arg(Arg::new("timeout").short('t').long("timeout").value_parser(value_parser!(f64)).help("Timeout as a floating point number expressed in seconds waiting for response. Default: 60.0"))
        .arg(Arg::new("conn_retries").short('r').default_value("0").value_parser(value_parser!(u32)).help("Retry connecting to the RPC server N times with 0.2s interval. Default: 0"))
        .arg(Arg::new("v").short('v').action(ArgAction::SetTrue).help("Set verbose mode to INFO"))
        .arg(Arg::new("verbose").long("verbose").value_parser(["DEBUG", "INFO", "ERROR"]).help("Set verbose level."))
        .arg(Arg::new("dry_run").long("dry-run").action(ArgAction::SetTrue).help("Display request and exit"));
    for spec in table {
        let mut sub = Command::new(spec.name).about(spec.help);
        for arg in &spec.args {
            sub = sub.args(build_arg(arg));
        }
        cli = cli.subcommand(sub);
    }
    cli
}

/// A hex integer with or without `0x` (rpc.py: `int(x, 16)`).
fn parse_hex(s: &str) -> Result<u64, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|e| format!("'{s}' is not a hex number: {e}"))
}

//! The command line: one flag per setting (made from [`super::KEYS`]), plus the flags that are not settings
//! (`--config`, `--print-config`, `--check-io`). Flags become TOML values laid over the file's, so a flag and its
//! key are parsed, defaulted and validated by the same code.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::keys::{Key, Kind};
use super::{ConfigError, KEYS};

/// Older flag spellings kept working (`--subprotocol` is also shorter to repeat).
const ALIASES: &[(&str, &str)] = &[("subprotocols", "subprotocol"), ("allowed_origins", "allow-origin")];

/// What the command line asks for.
#[derive(Debug)]
pub struct Args {
    /// The TOML file given with `--config`.
    pub config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    pub print_config: bool,
    /// Only check whether io_uring can be used here.
    pub check_io: bool,
    /// The settings given as flags, as TOML values by key.
    pub(super) overrides: toml::Table,
}

/// The command-line parser.
pub fn command() -> Command {
    let mut cmd = Command::new("wsgate")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Thread-per-core WebSocket gateway for real-time feeds")
        .after_help(
            "Every setting is a flag and a key of the --config file (the key is the flag with underscores); flags \
             override the file. Durations are in milliseconds. `--print-config` shows the effective values.",
        )
        .arg(Arg::new("config").long("config").value_name("FILE").help("TOML file with the settings (keys as below)"))
        .arg(
            Arg::new("print-config")
                .long("print-config")
                .action(ArgAction::SetTrue)
                .help("Print the effective configuration (defaults, file, flags) as TOML and exit"),
        )
        .arg(Arg::new("check-io").long("check-io").action(ArgAction::SetTrue).help(
            "Only check whether io_uring can be used here (the probe of `--io auto`), print the answer and exit: 0 \
             when it can, 3 when it cannot",
        ));
    for key in KEYS {
        cmd = cmd.arg(flag(key));
    }
    cmd
}

fn flag(key: &Key) -> Arg {
    let mut arg = Arg::new(key.name).long(key.flag()).help(key.summary()).long_help(key.help());
    if let Some(&(_, alias)) = ALIASES.iter().find(|(name, _)| *name == key.name) {
        arg = arg.visible_alias(alias);
    }
    match key.kind {
        Kind::Bool => arg.num_args(0..=1).default_missing_value("true").value_name("BOOL"),
        // Negative numbers reach the setting's own check (which names the key) instead of looking like flags.
        Kind::Int => arg.value_name("N").allow_negative_numbers(true),
        Kind::Millis => arg.value_name("MS").allow_negative_numbers(true),
        Kind::Str => arg.value_name("VALUE"),
        Kind::Choice(words) => arg.value_parser(clap::builder::PossibleValuesParser::new(words)),
        Kind::List => arg.action(ArgAction::Append).value_name("VALUE"),
        Kind::Toml => arg.value_name("TOML"),
    }
}

impl Args {
    /// Parses a command line (the program name first). `--help`, `--version` and malformed flags come back as
    /// clap's error, whose `exit()` prints them.
    pub fn parse_from<I, T>(args: I) -> Result<Result<Self, ConfigError>, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let m = command().try_get_matches_from(args)?;
        Ok(Self::from_matches(&m))
    }

    fn from_matches(m: &ArgMatches) -> Result<Self, ConfigError> {
        let mut overrides = toml::Table::new();
        for key in KEYS {
            let Some(values) = m.get_many::<String>(key.name) else { continue };
            let values: Vec<&String> = values.collect();
            overrides.insert(key.name.to_string(), value_of(key, &values)?);
        }
        Ok(Self {
            config: m.get_one::<String>("config").map(PathBuf::from),
            print_config: m.get_flag("print-config"),
            check_io: m.get_flag("check-io"),
            overrides,
        })
    }
}

/// The TOML value a flag's text stands for.
fn value_of(key: &Key, values: &[&String]) -> Result<toml::Value, ConfigError> {
    let bad = |what: &str, v: &str| ConfigError::Invalid(format!("--{}: expected {what}, got {v:?}", key.flag()));
    let last = values.last().map_or("", |v| v.as_str());
    Ok(match key.kind {
        Kind::Bool => match last {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            v => return Err(bad("true or false", v)),
        },
        Kind::Int | Kind::Millis => toml::Value::Integer(last.parse().map_err(|_| bad("a whole number", last))?),
        Kind::Str | Kind::Choice(_) => toml::Value::String(last.to_string()),
        Kind::List => toml::Value::Array(
            values
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_string()))
                .collect(),
        ),
        Kind::Toml => {
            let doc: toml::Table =
                format!("v = {last}").parse().map_err(|_| bad("a TOML value (see --print-config)", last))?;
            doc.get("v").cloned().ok_or_else(|| bad("a TOML value", last))?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Args {
        let full: Vec<&str> = std::iter::once("wsgate").chain(line.iter().copied()).collect();
        Args::parse_from(full).expect("flags parse").expect("values parse")
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn every_key_is_a_flag() {
        let cmd = command();
        for key in KEYS {
            let flag = key.flag();
            assert!(cmd.get_arguments().any(|a| a.get_long() == Some(&flag)), "no flag for {}", key.name);
            assert!(!key.summary().is_empty(), "{} has no doc comment to serve as its help", key.name);
        }
    }

    #[test]
    fn kinds_become_toml_values() {
        let a = args(&[
            "--demo",
            "--echo=false",
            "--threads",
            "3",
            "--handshake-timeout",
            "2500",
            "--listen",
            "127.0.0.1:9",
            "--io",
            "epoll",
            "--allowed-topics",
            "BTC-*,ETH-USD",
            "--allowed-topics",
            "SOL-USD",
        ]);
        let o = &a.overrides;
        assert_eq!(o["demo"], toml::Value::Boolean(true));
        assert_eq!(o["echo"], toml::Value::Boolean(false));
        assert_eq!(o["threads"], toml::Value::Integer(3));
        assert_eq!(o["handshake_timeout"], toml::Value::Integer(2500));
        assert_eq!(o["listen"], toml::Value::String("127.0.0.1:9".into()));
        assert_eq!(o["io"], toml::Value::String("epoll".into()));
        let topics: Vec<&str> = o["allowed_topics"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(topics, ["BTC-*", "ETH-USD", "SOL-USD"]);
        assert!(!o.contains_key("backlog"), "only flags given are overrides");
    }

    #[test]
    fn old_spellings_still_work() {
        let a = args(&["--subprotocol", "a", "--subprotocol", "b", "--allow-origin", "https://x"]);
        assert_eq!(a.overrides["subprotocols"].as_array().unwrap().len(), 2);
        assert_eq!(a.overrides["allowed_origins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = Args::parse_from(["wsgate", "--threads", "many"]).unwrap().unwrap_err().to_string();
        assert!(err.contains("--threads") && err.contains("many"), "{err}");
        let err = Args::parse_from(["wsgate", "--demo=yes"]).unwrap().unwrap_err().to_string();
        assert!(err.contains("--demo"), "{err}");
        assert!(Args::parse_from(["wsgate", "--io", "kqueue"]).is_err(), "choices are checked by clap");
        assert!(Args::parse_from(["wsgate", "--no-such-flag"]).is_err());
    }
}

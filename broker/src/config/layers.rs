//! Loading the configuration in layers: defaults < YAML file < environment < flags.
//!
//! The file's keys are turned into the flags they name and handed to the same clap parser
//! as the command line, but only for settings that neither a flag nor an environment
//! variable already gave. So a value is parsed by one function whichever layer it came
//! from, and a file value is checked on its own first, so its error names the file and
//! the key rather than a flag the user never typed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

use super::keys::{self, Key, KEYS};

/// Why the configuration could not be loaded. Each message names the file or variable, the
/// key, the value and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {} is not valid YAML: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("config file {}: {problem}", path.display())]
    Shape { path: PathBuf, problem: String },
    #[error("config file {}: unknown key `{key}`{hint}", path.display())]
    UnknownKey { path: PathBuf, key: String, hint: String },
    #[error("{origin}: invalid value `{value}` for `{key}`: {reason}")]
    BadValue { origin: String, key: String, value: String, reason: String },
}

/// Where a setting's value came from (`config show` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
}

/// The parsed command line and, per key, where its value came from.
pub struct Loaded<P> {
    pub parsed: P,
    pub matches: ArgMatches,
    pub sources: Vec<(&'static Key, Source)>,
}

/// Either clap's own error (bad flag, `--help`, `--version`: print it with `exit()`) or a
/// configuration error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Parses `args` (with the program name first) into `P`, a parser that flattens
/// [`super::Config`], applying the environment and the `--config` file under the flags.
pub fn load<P: clap::Parser>(args: Vec<OsString>) -> Result<Loaded<P>, LoadError> {
    let command = P::command();
    check_env(&command)?;
    let matches = command.clone().try_get_matches_from(&args)?;
    let file = matches.get_one::<PathBuf>("config_file").cloned();
    let mut from_file: Vec<&'static Key> = Vec::new();
    let matches = match &file {
        None => matches,
        Some(path) => {
            let (entries, mut errors) = read_file(path)?;
            if !errors.is_empty() {
                return Err(errors.swap_remove(0).into());
            }
            let mut argv: Vec<OsString> = args.first().cloned().into_iter().collect();
            for (key, value) in &entries {
                check_value(&command, key, value, &format!("config file {}", path.display()))?;
                // Not given by a flag or a variable: the file decides (for a setting with a
                // default, clap reports `DefaultValue`; without one, no source at all).
                let given = matches!(
                    matches.value_source(key.arg),
                    Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
                );
                if !given {
                    argv.push(flag_with_value(&command, key, value));
                    from_file.push(key);
                }
            }
            argv.extend(args.into_iter().skip(1));
            command.clone().try_get_matches_from(argv)?
        }
    };
    let sources = KEYS
        .iter()
        .map(|key| {
            let source = if from_file.iter().any(|k| k.name == key.name) {
                Source::File(file.clone().unwrap_or_default())
            } else {
                match matches.value_source(key.arg) {
                    Some(ValueSource::EnvVariable) => Source::Env(keys::env_name(key.name)),
                    Some(ValueSource::CommandLine) => Source::Flag,
                    _ => Source::Default,
                }
            };
            (key, source)
        })
        .collect();
    let parsed = P::from_arg_matches(&matches)?;
    Ok(Loaded { parsed, matches, sources })
}

/// Checks a config file without starting anything: every key known, every value valid.
/// Returns the number of keys, or every problem found (not only the first).
pub fn check_file(command: &Command, path: &Path) -> Result<usize, Vec<ConfigError>> {
    let (entries, mut errors) = read_file(path).map_err(|e| vec![e])?;
    let origin = format!("config file {}", path.display());
    errors.extend(entries.iter().filter_map(|(key, value)| check_value(command, key, value, &origin).err()));
    if errors.is_empty() {
        Ok(entries.len())
    } else {
        Err(errors)
    }
}

/// The effective configuration as YAML that [`load`] reads back, each value commented with
/// where it came from.
pub fn show<P>(loaded: &Loaded<P>) -> String {
    let mut out = String::new();
    let mut open: Vec<&str> = Vec::new();
    for (key, source) in &loaded.sources {
        let parts: Vec<&str> = key.name.split('.').collect();
        let (sections, leaf) = parts.split_at(parts.len() - 1);
        let common = open.iter().zip(sections).take_while(|(a, b)| a == b).count();
        open.truncate(common);
        for section in &sections[common..] {
            out.push_str(&format!("{}{section}:\n", "  ".repeat(open.len())));
            open.push(section);
        }
        let indent = "  ".repeat(open.len());
        let from = match source {
            Source::Default => "default".to_string(),
            Source::File(path) => format!("from {}", path.display()),
            Source::Env(var) => format!("from {var}"),
            Source::Flag => "from the command line".to_string(),
        };
        match loaded.matches.get_raw(key.arg).and_then(|mut v| v.next()) {
            Some(value) => {
                out.push_str(&format!("{indent}{}: {}  # {from}\n", leaf[0], yaml_scalar(&value.to_string_lossy())))
            }
            None => out.push_str(&format!("{indent}# {}: (not set)\n", leaf[0])),
        }
    }
    out
}

fn yaml_scalar(value: &str) -> String {
    let plain = !value.is_empty()
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !value.starts_with(['-', '.']);
    if plain {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

/// Every `PROMPTMQ_*` variable of a known key must hold a valid value; checked before clap
/// sees it, so the error names the variable.
fn check_env(command: &Command) -> Result<(), ConfigError> {
    for key in KEYS {
        let var = keys::env_name(key.name);
        match std::env::var(&var) {
            Ok(value) => check_value(command, key, &value, &format!("environment variable {var}"))?,
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ConfigError::BadValue {
                    origin: format!("environment variable {var}"),
                    key: key.name.to_string(),
                    value: "(not UTF-8)".to_string(),
                    reason: "the value must be UTF-8".to_string(),
                })
            }
        }
    }
    Ok(())
}

fn check_value(command: &Command, key: &Key, value: &str, origin: &str) -> Result<(), ConfigError> {
    let Some(arg) = command.get_arguments().find(|a| a.get_id() == key.arg) else {
        // KEYS names an argument that does not exist: a programming error the unit tests catch.
        return Err(ConfigError::BadValue {
            origin: origin.to_string(),
            key: key.name.to_string(),
            value: value.to_string(),
            reason: "this key has no setting behind it".to_string(),
        });
    };
    // The argument alone in a throwaway command: its own parser and possible values decide.
    let flag = flag_with_value(command, key, value);
    Command::new("check")
        .arg(arg.clone().env(None::<&str>).required(false).requires(clap::builder::Resettable::<clap::Id>::Reset))
        .try_get_matches_from([OsString::from("check"), flag])
        .map(|_| ())
        .map_err(|e| ConfigError::BadValue {
            origin: origin.to_string(),
            key: key.name.to_string(),
            value: value.to_string(),
            reason: clap_reason(&e),
        })
}

/// The useful part of a clap value error: the parser's own message, or the allowed values.
fn clap_reason(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("expected one of: {}", valid.join(", "));
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
    // "invalid value 'x' for '--flag <FLAG>': reason" -> "reason"
    first.rsplit_once("': ").map_or(first, |(_, reason)| reason).to_string()
}

fn flag_with_value(command: &Command, key: &Key, value: &str) -> OsString {
    let long = command
        .get_arguments()
        .find(|a| a.get_id() == key.arg)
        .and_then(|a| a.get_long())
        .unwrap_or(key.arg)
        .to_string();
    OsString::from(format!("--{long}={value}"))
}

/// The file's settings as (key, value) pairs, and the unknown or repeated keys. Sections
/// nest (`storage: {wal: {sync-mode: x}}`), and dotted keys (`storage.wal.sync-mode: x`)
/// work too.
type FileEntries = (Vec<(&'static Key, String)>, Vec<ConfigError>);
fn read_file(path: &Path) -> Result<FileEntries, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Yaml { path: path.into(), message: e.to_string() })?;
    let mut flat = Vec::new();
    match doc {
        serde_yaml_ng::Value::Null => {}
        serde_yaml_ng::Value::Mapping(map) => flatten(path, "", map, &mut flat)?,
        _ => return Err(shape(path, "the top level must be a mapping of keys to values".into())),
    }
    let mut entries: Vec<(&'static Key, String)> = Vec::with_capacity(flat.len());
    let mut errors = Vec::new();
    for (name, value) in flat {
        match keys::by_name(&name) {
            None => errors.push(ConfigError::UnknownKey { path: path.into(), hint: hint(&name), key: name }),
            Some(key) if entries.iter().any(|(k, _)| k.name == key.name) => {
                errors.push(shape(path, format!("`{name}` is given twice")))
            }
            Some(key) => entries.push((key, value)),
        }
    }
    Ok((entries, errors))
}

fn shape(path: &Path, problem: String) -> ConfigError {
    ConfigError::Shape { path: path.into(), problem }
}

fn flatten(
    path: &Path,
    prefix: &str,
    map: serde_yaml_ng::Mapping,
    out: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    for (k, v) in map {
        let Value::String(k) = k else {
            return Err(shape(path, format!("keys must be strings (under `{prefix}`)")));
        };
        let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        let value = match v {
            Value::Mapping(inner) => {
                flatten(path, &name, inner, out)?;
                continue;
            }
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => return Err(shape(path, format!("`{name}` has no value"))),
            Value::Sequence(_) | Value::Tagged(_) => {
                return Err(shape(path, format!("`{name}` must be a single value, not a list or tagged value")))
            }
        };
        out.push((name, value));
    }
    Ok(())
}

/// " (did you mean `x`?)" for the closest known key, when one is close.
fn hint(name: &str) -> String {
    let best = KEYS.iter().map(|k| (edit_distance(name, k.name), k.name)).min();
    match best {
        Some((d, k)) if d <= 4 || k.rsplit('.').next() == name.rsplit('.').next() => {
            format!(" (did you mean `{k}`?)")
        }
        _ => " (`promptmq config show` lists the keys)".to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_one_key_and_its_env_follows_the_rule() {
        let command = Config::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" || keys::NOT_KEYS.contains(&id) {
                continue;
            }
            let named: Vec<&Key> = KEYS.iter().filter(|k| k.arg == id).collect();
            assert_eq!(named.len(), 1, "flag `{id}` must have exactly one config key");
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(env, Some(keys::env_name(named[0].name)), "env var of `{id}`");
        }
        for key in KEYS {
            assert!(command.get_arguments().any(|a| a.get_id() == key.arg), "key {} names no flag", key.name);
        }
    }

    /// "Every key demonstrably does something": each key's flag, variable or name must
    /// appear in an integration test under `broker/tests/`, where the test observes its
    /// effect. (This checks that such a test exists; the tests themselves check the effect.)
    #[test]
    fn every_key_is_used_by_an_integration_test() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
        let mut sources = String::new();
        for entry in std::fs::read_dir(dir).unwrap().chain(std::fs::read_dir(format!("{dir}/common")).unwrap()) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
        let command = Config::command();
        let unused: Vec<&str> = KEYS
            .iter()
            .filter(|key| {
                let long = command.get_arguments().find(|a| a.get_id() == key.arg).and_then(|a| a.get_long());
                let flag = long.map(|l| format!("\"--{l}\""));
                !(flag.is_some_and(|f| sources.contains(&f))
                    || sources.contains(&keys::env_name(key.name))
                    || sources.contains(key.name))
            })
            .map(|key| key.name)
            .collect();
        assert!(unused.is_empty(), "keys no integration test uses: {unused:?}");
    }

    #[test]
    fn env_names() {
        assert_eq!(keys::env_name("server.bind"), "PROMPTMQ_SERVER_BIND");
        assert_eq!(keys::env_name("storage.wal.sync-mode"), "PROMPTMQ_STORAGE_WAL_SYNC_MODE");
    }

    #[test]
    fn hints_name_the_closest_key() {
        assert_eq!(hint("storage.wal.sync_mode"), " (did you mean `storage.wal.sync-mode`?)");
        assert_eq!(hint("wal.sync-mode"), " (did you mean `storage.wal.sync-mode`?)");
        assert!(hint("completely.different").contains("config show"));
    }

    #[test]
    fn clap_reasons_are_short() {
        let command = Config::command();
        let key = keys::by_name("storage.wal.sync-mode").unwrap();
        let err = check_value(&command, key, "fast", "test").unwrap_err().to_string();
        assert_eq!(
            err,
            "test: invalid value `fast` for `storage.wal.sync-mode`: expected one of: immediate, batch, periodic, none"
        );
        let key = keys::by_name("server.bind").unwrap();
        let err = check_value(&command, key, "nowhere", "test").unwrap_err().to_string();
        assert!(err.starts_with("test: invalid value `nowhere` for `server.bind`: "), "{err}");
        assert!(!err.contains("--bind"), "{err}");
    }
}

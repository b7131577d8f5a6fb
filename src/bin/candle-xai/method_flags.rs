//! The method options of `candle-xai explain`, derived from the methods' parameters
//! (`candle_xai::methods::catalog`): each parameter key is a flag (`n_steps` -> `--n-steps`),
//! a boolean one is `--key` / `--no-key`. The flags collect JSON overrides that the library
//! turns into the method, so a new parameter needs no change here.

use std::collections::BTreeSet;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde_json::{Map, Value};

use candle_xai::methods::{catalog, not_applicable, Kind};
use candle_xai::{Error, Method};

/// Flags not named after their parameter's key: older names, kept as the flags' names (the
/// key-derived spelling is then an alias: `--n-iter` and `--n-samples` both set `n_samples`),
/// and names that would collide with the command's own options (its `--alpha` is the heatmap's
/// opacity, so LRP's `alpha` is `--lrp-alpha`).
const FLAG_NAMES: [(&str, &str, KeyAlias); 6] = [
    ("n_samples", "n-iter", KeyAlias::Accepted),
    ("quadrature", "ig-method", KeyAlias::Accepted),
    ("aggregate", "smoothgrad-type", KeyAlias::Accepted),
    ("merge_convention", "bn-merge", KeyAlias::Accepted),
    ("alpha", "lrp-alpha", KeyAlias::Taken),
    ("beta", "lrp-beta", KeyAlias::Taken),
];

#[derive(Clone, Copy, PartialEq)]
enum KeyAlias {
    Accepted,
    /// The key-derived name means something else on the command line.
    Taken,
}

/// One flag of one parameter.
struct ParameterFlag {
    key: &'static str,
    /// The long name, without dashes.
    name: String,
    alias: Option<String>,
    /// For boolean parameters: the value the flag sets. Others take a value.
    sets: Option<bool>,
    help: String,
    value_name: String,
    /// No method's default differs from what the flag sets (`--relu`): accepted, not listed.
    hidden: bool,
}

/// Every parameter flag, in the order the methods list their parameters.
fn parameter_flags() -> Vec<ParameterFlag> {
    struct Seen {
        key: &'static str,
        kind: Kind,
        help: String,
        value_name: String,
        users: Vec<String>,
        defaults: BTreeSet<String>,
    }
    let mut seen: Vec<Seen> = Vec::new();
    for method in catalog() {
        for p in &method.parameters {
            let parameter = &p.parameter;
            let index = match seen.iter().position(|s| s.key == parameter.key) {
                Some(i) => i,
                None => {
                    seen.push(Seen {
                        key: parameter.key,
                        kind: parameter.kind,
                        help: match parameter.syntax {
                            Some(syntax) => format!("{}: {syntax}", parameter.help),
                            None => parameter.help.to_string(),
                        },
                        value_name: value_name(parameter),
                        users: Vec::new(),
                        defaults: BTreeSet::new(),
                    });
                    seen.len() - 1
                }
            };
            seen[index].users.push(method.name.clone());
            seen[index].defaults.insert(p.default.to_string());
        }
    }
    let mut flags = Vec::new();
    for s in seen {
        let dashed = s.key.replace('_', "-");
        let users = s.users.join(", ");
        if s.kind == Kind::Bool {
            for sets in [true, false] {
                let hidden = !s.defaults.iter().any(|d| d != &sets.to_string());
                flags.push(ParameterFlag {
                    key: s.key,
                    name: if sets { dashed.clone() } else { format!("no-{dashed}") },
                    alias: None,
                    sets: Some(sets),
                    help: match sets {
                        true => format!("{users}: {}", s.help),
                        false => format!("{users}: turn `{}` off: {}", s.key, s.help),
                    },
                    value_name: String::new(),
                    hidden,
                });
            }
            continue;
        }
        let renamed = FLAG_NAMES.iter().find(|(key, ..)| *key == s.key);
        // Objects (a baseline's tagged form) read worse than the syntax the help gives.
        let defaults: Vec<&str> = s
            .defaults
            .iter()
            .map(String::as_str)
            .filter(|d| *d != "null" && !d.starts_with('{'))
            .collect();
        let default = match defaults.as_slice() {
            [] => String::new(),
            [one] => format!(" [default: {}]", one.trim_matches('"')),
            _ => " [default: depends on the method]".to_string(),
        };
        flags.push(ParameterFlag {
            key: s.key,
            name: renamed.map_or_else(|| dashed.clone(), |(_, flag, _)| flag.to_string()),
            alias: renamed
                .filter(|(.., alias)| *alias == KeyAlias::Accepted)
                .map(|_| dashed),
            sets: None,
            help: format!("{users}: {}{default}", s.help),
            value_name: s.value_name,
            hidden: false,
        });
    }
    flags
}

fn value_name(parameter: &candle_xai::methods::Parameter) -> String {
    match parameter.kind {
        Kind::Choice => parameter.choices.join("|"),
        Kind::Integer => "N".into(),
        Kind::Number => "X".into(),
        Kind::Text => parameter.syntax.map_or("TEXT", |_| "SPEC").into(),
        Kind::Json | Kind::Bool => "JSON".into(),
    }
}

/// One method option as given on the command line.
#[derive(Debug, Clone)]
struct Given {
    flag: String,
    key: &'static str,
    /// The flag's own value (booleans), or the word that followed it.
    value: Result<bool, String>,
}

/// The method options present on a command line.
#[derive(Debug, Clone, Default)]
pub struct MethodFlags {
    given: Vec<Given>,
}

impl Args for MethodFlags {
    fn augment_args(mut command: Command) -> Command {
        for flag in parameter_flags() {
            let mut arg = Arg::new(flag.name.clone())
                .long(flag.name.clone())
                .help(flag.help)
                .hide(flag.hidden)
                .help_heading("Method options (see `candle-xai methods`)");
            if let Some(alias) = flag.alias {
                arg = arg.visible_alias(alias);
            }
            arg = match flag.sets {
                Some(_) => arg.action(ArgAction::SetTrue),
                None => arg
                    .action(ArgAction::Set)
                    .value_name(flag.value_name)
                    .allow_negative_numbers(true),
            };
            command = command.arg(arg);
        }
        command
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for MethodFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for flag in parameter_flags() {
            let value = match flag.sets {
                Some(sets) => matches.get_flag(&flag.name).then_some(Ok(sets)),
                None => matches.get_one::<String>(&flag.name).map(|text| Err(text.clone())),
            };
            if let Some(value) = value {
                self.given.push(Given {
                    flag: format!("--{}", flag.name),
                    key: flag.key,
                    value,
                });
            }
        }
        Ok(())
    }
}

impl MethodFlags {
    /// The method called `name` with these options: each one must be a parameter of the
    /// method; errors name the flag as it was written.
    pub fn method(&self, name: &str) -> Result<Method, Error> {
        let method = Method::from_name(name)?;
        let canonical = method.name();
        let parameters = method.parameters();
        let mut overrides = Map::new();
        for given in &self.given {
            let Some(parameter) = parameters.iter().find(|p| p.key == given.key) else {
                return Err(not_applicable(&format!("option {}", given.flag), given.key, &canonical));
            };
            let value = match &given.value {
                Ok(sets) => Value::Bool(*sets),
                Err(text) => parameter.value_from_text(text).map_err(|e| self.name_flags(e))?,
            };
            overrides.insert(given.key.to_string(), value);
        }
        Method::from_json(&canonical, &Value::Object(overrides)).map_err(|e| self.name_flags(e))
    }

    /// The engine names parameters by their keys; the user wrote flags.
    fn name_flags(&self, error: Error) -> Error {
        match error {
            Error::InvalidParameter { parameter, reason } => {
                let shown = match self.given.iter().find(|g| g.key == parameter) {
                    Some(g) if g.flag.trim_start_matches('-') == parameter => g.flag.clone(),
                    Some(g) => format!("{} ({parameter})", g.flag),
                    None => parameter,
                };
                Error::InvalidParameter {
                    parameter: shown,
                    reason,
                }
            }
            other => other,
        }
    }

    /// Removes the option setting parameter `key` and returns its value as written (the
    /// `evaluate` command reads `--seed` for its metrics).
    pub fn take(&mut self, key: &str) -> Option<String> {
        let index = self.given.iter().position(|g| g.key == key)?;
        self.given.remove(index).value.err()
    }

    /// Sets parameter `key` to `text` as if it had been written on the command line.
    pub fn set(&mut self, key: &'static str, text: &str) {
        self.given.retain(|g| g.key != key);
        self.given.push(Given {
            flag: format!("--{}", key.replace('_', "-")),
            key,
            value: Err(text.to_string()),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
    }

    /// The long names (`--n-steps`) of the flags that set parameters of `method`.
    pub fn applicable(method: &Method) -> Vec<String> {
        let keys: Vec<&str> = method.parameters().iter().map(|p| p.key).collect();
        parameter_flags()
            .into_iter()
            .filter(|f| !f.hidden && keys.contains(&f.key))
            .map(|f| format!("--{}", f.name))
            .collect()
    }
}

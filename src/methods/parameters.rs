//! The one description of every method's parameters: the JSON key a method takes, its kind,
//! what it means and, for hyper-parameter search, its range. A method is built here from a
//! JSON object of overrides over its defaults; the CLI derives its flags from the same list,
//! the page its controls, and `candle-xai methods` and the JS `methods()` print it
//! ([`catalog`]). Each method's own file lists its parameters next to its fields, so adding a
//! parameter is an edit in that one file.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::Method;
use crate::error::{Error, Result};

/// How a parameter's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Bool,
    /// A whole number >= 0.
    Integer,
    Number,
    /// One of `choices`.
    Choice,
    /// A value in a small syntax of its own (`syntax`), or its JSON form.
    Text,
    /// A JSON value (the CLI takes it as JSON text).
    Json,
}

/// How hyper-parameter search samples a tunable parameter (pnpxai's `get_tunables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scale {
    Linear,
    Log,
    Integer,
    Choice,
}

/// A tunable parameter with its search range; `default` is the method's current value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tunable {
    /// The parameter's key in the method's JSON.
    pub name: &'static str,
    pub scale: Scale,
    pub min: f64,
    pub max: f64,
    pub default: f64,
    /// For `Choice`: the allowed values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_choice: Option<String>,
}

/// One parameter of a method.
#[derive(Debug, Clone, Serialize)]
pub struct Parameter {
    /// The key in the method's JSON (`n_steps`); CLI flags are derived from it.
    pub key: &'static str,
    pub kind: Kind,
    /// A short name for a form's label.
    pub label: &'static str,
    pub help: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syntax: Option<&'static str>,
    /// The smallest value allowed (numbers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest value allowed (numbers): a bound on the work one explanation may ask for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// May be null: the method then does without it (e.g. `stdev` unset = relative noise).
    pub optional: bool,
    /// Another parameter that may not be given together with this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excludes: Option<&'static str>,
    /// (scale, min, max) for hyper-parameter search; None = not tuned.
    #[serde(skip)]
    tune: Option<(Scale, f64, f64)>,
    /// Whether a JSON value deserialises as the field's type (the type's own parser).
    #[serde(skip)]
    accepts: fn(&Value) -> std::result::Result<(), String>,
}

fn deserialises_as<T: DeserializeOwned>(value: &Value) -> std::result::Result<(), String> {
    T::deserialize(value).map(drop).map_err(|e| e.to_string())
}

impl Parameter {
    fn new<T: DeserializeOwned>(key: &'static str, kind: Kind, label: &'static str, help: &'static str) -> Self {
        Self {
            key,
            kind,
            label,
            help,
            choices: Vec::new(),
            syntax: None,
            min: None,
            max: None,
            optional: false,
            excludes: None,
            tune: None,
            accepts: deserialises_as::<T>,
        }
    }

    pub(crate) fn bool(key: &'static str, label: &'static str, help: &'static str) -> Self {
        Self::new::<bool>(key, Kind::Bool, label, help)
    }

    pub(crate) fn integer(key: &'static str, label: &'static str, help: &'static str) -> Self {
        Self::new::<u64>(key, Kind::Integer, label, help)
    }

    pub(crate) fn number(key: &'static str, label: &'static str, help: &'static str) -> Self {
        Self::new::<f64>(key, Kind::Number, label, help)
    }

    /// A parameter of type `T` whose values are the names in `choices` (`T` parses them).
    pub(crate) fn choice<T: DeserializeOwned>(
        key: &'static str,
        label: &'static str,
        help: &'static str,
        choices: Vec<&'static str>,
    ) -> Self {
        Self {
            choices,
            ..Self::new::<T>(key, Kind::Choice, label, help)
        }
    }

    /// A parameter of type `T` written in `syntax` (`T` parses it) or as `T`'s JSON.
    pub(crate) fn text<T: DeserializeOwned>(
        key: &'static str,
        label: &'static str,
        help: &'static str,
        syntax: &'static str,
    ) -> Self {
        Self {
            syntax: Some(syntax),
            ..Self::new::<T>(key, Kind::Text, label, help)
        }
    }

    pub(crate) fn json<T: DeserializeOwned>(key: &'static str, label: &'static str, help: &'static str) -> Self {
        Self::new::<T>(key, Kind::Json, label, help)
    }

    pub(crate) fn at_least(self, min: f64) -> Self {
        Self { min: Some(min), ..self }
    }

    pub(crate) fn at_most(self, max: f64) -> Self {
        Self { max: Some(max), ..self }
    }

    pub(crate) fn optional(self) -> Self {
        Self { optional: true, ..self }
    }

    pub(crate) fn excludes(self, other: &'static str) -> Self {
        Self {
            excludes: Some(other),
            ..self
        }
    }

    pub(crate) fn tuned(self, scale: Scale, min: f64, max: f64) -> Self {
        Self {
            tune: Some((scale, min, max)),
            ..self
        }
    }

    /// Checks one value for this parameter.
    pub fn check(&self, value: &Value) -> Result<()> {
        if value.is_null() {
            return match self.optional {
                true => Ok(()),
                false => Err(Error::invalid_parameter(self.key, "must be given (it cannot be null)")),
            };
        }
        (self.accepts)(value).map_err(|reason| Error::invalid_parameter(self.key, reason))?;
        self.check_range(value)
    }

    /// Checks a number against [`Parameter::min`] and [`Parameter::max`].
    fn check_range(&self, value: &Value) -> Result<()> {
        let Some(v) = value.as_f64() else {
            return Ok(());
        };
        let range = match (self.min, self.max) {
            (Some(min), Some(max)) => format!("from {min} to {max}"),
            (Some(min), None) => format!("at least {min}"),
            (None, Some(max)) => format!("at most {max}"),
            (None, None) => return Ok(()),
        };
        if self.min.is_some_and(|min| v < min) || self.max.is_some_and(|max| v > max) {
            return Err(Error::invalid_parameter(
                self.key,
                format!("{v} is out of range: it must be {range}"),
            ));
        }
        Ok(())
    }

    /// The value a command-line word stands for, checked (booleans are flags and take none).
    pub fn value_from_text(&self, text: &str) -> Result<Value> {
        let word = text.trim();
        let value = match self.kind {
            Kind::Bool => word
                .parse::<bool>()
                .map(Value::from)
                .map_err(|_| Error::invalid_parameter(self.key, format!("`{text}` is not true or false")))?,
            Kind::Integer => word
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| Error::invalid_parameter(self.key, format!("`{text}` is not a whole number >= 0")))?,
            Kind::Number => word
                .parse::<f64>()
                .ok()
                .and_then(|v| serde_json::Number::from_f64(v).map(Value::Number))
                .ok_or_else(|| Error::invalid_parameter(self.key, format!("`{text}` is not a finite number")))?,
            Kind::Choice | Kind::Text => Value::String(word.to_string()),
            Kind::Json => serde_json::from_str(word)
                .map_err(|e| Error::invalid_parameter(self.key, format!("`{text}` is not valid JSON: {e}")))?,
        };
        self.check(&value)?;
        Ok(value)
    }

    fn tunable(&self, default: &Value) -> Option<Tunable> {
        let (scale, min, max) = self.tune?;
        Some(Tunable {
            name: self.key,
            scale,
            min,
            max,
            default: default.as_f64().unwrap_or(0.0),
            choices: self.choices.clone(),
            default_choice: (scale == Scale::Choice).then(|| default.as_str().unwrap_or_default().to_string()),
        })
    }
}

/// The method's defaults as the JSON object its parameters are keys of.
fn json_of(method: &Method) -> Result<serde_json::Map<String, Value>> {
    match serde_json::to_value(method) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(Error::invalid_parameter(
            "method",
            format!("serialised as {other}, not an object"),
        )),
        Err(e) => Err(Error::invalid_parameter("method", e.to_string())),
    }
}

impl Method {
    /// The parameters this method takes.
    pub fn parameters(&self) -> Vec<Parameter> {
        match self {
            Method::Gradient(p) => p.parameters(),
            Method::InputXGradient => Vec::new(),
            Method::SmoothGrad(p) => p.parameters(),
            Method::IntegratedGradients(p) => p.parameters(),
            Method::GradCam(p) => p.parameters(),
            Method::AttentionRollout(p) => p.parameters(),
            Method::GenericAttention => Vec::new(),
            Method::Lrp(p) => p.parameters(),
        }
    }

    /// The tunable parameters with their ranges; defaults are this method's current values.
    pub fn tunables(&self) -> Vec<Tunable> {
        let values = json_of(self).unwrap_or_default();
        self.parameters()
            .iter()
            .filter_map(|p| p.tunable(values.get(p.key).unwrap_or(&Value::Null)))
            .collect()
    }

    /// The method called `name` with its defaults overridden by `overrides`, a JSON object such
    /// as `{"n_steps": 16}` (null or `{}`: the defaults). Every key must be one of the method's
    /// parameters; a value it reports back in an explanation's `params` that it does not take
    /// (another composite's `gamma`, say) is accepted only at its default.
    pub fn from_json(name: &str, overrides: &Value) -> Result<Method> {
        let method = Method::from_name(name)?;
        let overrides = match overrides {
            Value::Null => return Ok(method),
            Value::Object(o) => o,
            _ => {
                return Err(Error::invalid_parameter(
                    "parameters",
                    "expected a JSON object of parameter values",
                ))
            }
        };
        let canonical = method.name();
        let parameters = method.parameters();
        let defaults = json_of(&method)?;
        let mut values = defaults.clone();
        for (key, value) in overrides {
            match parameters.iter().find(|p| p.key == key) {
                Some(parameter) => {
                    parameter.check(value)?;
                    // Both given, the other one changed from its default (an explanation's
                    // `params` carry every default, so an unchanged one is no conflict).
                    let conflict = parameter.excludes.filter(|other| {
                        let given = overrides.get(*other).filter(|v| !v.is_null());
                        !value.is_null() && given.is_some() && given != defaults.get(*other)
                    });
                    if let Some(other) = conflict {
                        return Err(Error::invalid_parameter(
                            key,
                            format!("give either `{other}` or `{key}`, not both"),
                        ));
                    }
                    values.insert(key.clone(), value.clone());
                }
                // The method's name is given separately. Fields it reports but does not take
                // are accepted at their defaults, so an explanation's `params` can be sent back.
                None if key == "method" || values.get(key).is_some_and(|v| same_value(v, value)) => {}
                None => return Err(not_applicable(&format!("`{key}`"), key, &canonical)),
            }
        }
        let method: Method = serde_json::from_value(Value::Object(values))
            .map_err(|e| Error::invalid_parameter(&canonical, e.to_string()))?;
        method.validate()?;
        Ok(method)
    }

    /// Checks every parameter's value against its range (also for a method built in code,
    /// not read from JSON), then what the method requires of their combination. `explain`
    /// runs it before any work.
    pub fn validate(&self) -> Result<()> {
        let values = json_of(self)?;
        for parameter in self.parameters() {
            if let Some(value) = values.get(parameter.key) {
                parameter.check_range(value)?;
            }
        }
        match self {
            Method::Gradient(_) | Method::InputXGradient | Method::GradCam(_) | Method::GenericAttention => Ok(()),
            Method::AttentionRollout(p) => p.validate(),
            Method::SmoothGrad(p) => p.validate(),
            Method::IntegratedGradients(p) => p.validate(),
            Method::Lrp(p) => p.validate(),
        }
    }
}

/// JSON values equal as values: 2 and 2.0 are the same number (JavaScript writes 2.0 as 2).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The methods that take the parameter `key`.
pub fn methods_taking(key: &str) -> Vec<&'static str> {
    Method::NAMES
        .into_iter()
        .filter(|name| Method::from_name(name).is_ok_and(|m| m.parameters().iter().any(|p| p.key == key)))
        .collect()
}

/// The error for a parameter that `method` does not take; `shown` is how the caller wrote
/// it (`n_steps` in JSON, `--n-steps` on a command line).
pub fn not_applicable(shown: &str, key: &str, method: &str) -> Error {
    let used_by = methods_taking(key);
    Error::ParameterNotApplicable {
        parameter: shown.to_string(),
        method: method.to_string(),
        used_by: match used_by.is_empty() {
            true => "no method".to_string(),
            false => used_by.join(", "),
        },
    }
}

/// One method as [`catalog`] lists it.
#[derive(Debug, Clone, Serialize)]
pub struct MethodInfo {
    /// The name `from_name` and `from_json` take.
    pub name: String,
    pub label: &'static str,
    pub help: &'static str,
    /// The default parameters, as `from_json` accepts them.
    pub defaults: Value,
    /// Every parameter, with its default.
    pub parameters: Vec<ParameterInfo>,
    /// The parameters hyper-parameter search varies, with their ranges.
    pub tunables: Vec<Tunable>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParameterInfo {
    #[serde(flatten)]
    pub parameter: Parameter,
    pub default: Value,
}

/// Every method with its label, help, defaults, parameters and tunables: the schema the CLI's
/// `methods`, its flags, the JS API and the page's controls all come from.
pub fn catalog() -> Vec<MethodInfo> {
    Method::NAMES
        .iter()
        .filter_map(|name| Method::from_name(name).ok())
        .map(|method| {
            let defaults = json_of(&method).unwrap_or_default();
            MethodInfo {
                name: method.name(),
                label: method.label(),
                help: method.help(),
                parameters: method
                    .parameters()
                    .into_iter()
                    .map(|parameter| ParameterInfo {
                        default: defaults.get(parameter.key).cloned().unwrap_or(Value::Null),
                        parameter,
                    })
                    .collect(),
                tunables: method.tunables(),
                defaults: Value::Object(defaults),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::methods::{Baseline, Quadrature};

    /// The advertised bounds hold for methods built in code as for those read from JSON.
    #[test]
    fn validate_checks_every_range() {
        let ig = |n_steps| {
            Method::IntegratedGradients(crate::methods::IntegratedGradientsParams {
                n_steps,
                ..Default::default()
            })
        };
        assert!(ig(crate::methods::probe::MAX_ROWS).validate().is_ok());
        let err = ig(crate::methods::probe::MAX_ROWS + 1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_steps") && err.contains("from 1 to 4096"), "{err}");
    }

    #[test]
    fn every_method_takes_back_its_own_json() {
        for info in catalog() {
            let method = Method::from_json(&info.name, &info.defaults).unwrap();
            assert_eq!(serde_json::to_value(&method).unwrap(), info.defaults, "{}", info.name);
            for p in &info.parameters {
                p.parameter
                    .check(&p.default)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", info.name, p.parameter.key));
            }
        }
    }

    /// A method's parameters sent back through JavaScript, where 2.0 comes back as 2.
    #[test]
    fn parameters_come_back_through_javascript() {
        for name in Method::NAMES {
            let method = Method::from_name(name).unwrap();
            let mut json = serde_json::to_value(&method).unwrap();
            for value in json.as_object_mut().unwrap().values_mut() {
                if let Some(x) = value.as_f64().filter(|x| x.fract() == 0.0 && *x >= 0.0) {
                    *value = json!(x as u64);
                }
            }
            Method::from_json(name, &json).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn overrides_are_checked_one_by_one() {
        let ig = |overrides| Method::from_json("integrated-gradients", &overrides);
        match ig(json!({"n_steps": 7, "quadrature": "Riemann_Middle", "baseline": "blur:2"})).unwrap() {
            Method::IntegratedGradients(p) => {
                assert_eq!((p.n_steps, p.quadrature), (7, Quadrature::RiemannMiddle));
                assert!(matches!(p.baseline, Baseline::Blur { sigma } if sigma == 2.0));
            }
            other => panic!("{other:?}"),
        }
        for (overrides, needle) in [
            (json!({"n_steps": 0}), "n_steps"),
            (json!({"n_steps": "many"}), "n_steps"),
            (json!({"quadrature": "simpson"}), "riemann-trapezoid"),
            (json!({"baseline": "blur:x"}), "blur:<sigma>"),
            (json!({"seed": 3}), "uniform"),
            (json!({"epsilon": 0.1}), "lrp-epsilon-plus"),
        ] {
            let err = ig(overrides.clone()).unwrap_err().to_string();
            assert!(err.contains(needle), "{overrides}: {err}");
        }
        let err = Method::from_json("smoothgrad", &json!({"stdev": 0.1, "noise_level": 0.2})).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        // A field reported back at its default is accepted; changed, it is refused.
        assert!(Method::from_json("lrp-epsilon-plus", &json!({"gamma": 0.25})).is_ok());
        assert!(Method::from_json("lrp-epsilon-plus", &json!({"gamma": 0.5})).is_err());
    }

    #[test]
    fn text_forms_parse_as_the_cli_writes_them() {
        let gamma_box = Method::from_name("lrp-epsilon-gamma-box").unwrap();
        let low = gamma_box.parameters().into_iter().find(|p| p.key == "low").unwrap();
        assert_eq!(low.value_from_text("-1,-2,-3").unwrap(), json!("-1,-2,-3"));
        assert!(low.value_from_text("1,x").is_err());
        let smoothgrad = Method::from_name("smoothgrad").unwrap();
        let n = smoothgrad
            .parameters()
            .into_iter()
            .find(|p| p.key == "n_samples")
            .unwrap();
        assert_eq!(n.value_from_text("12").unwrap(), json!(12));
        assert!(n.value_from_text("-1").is_err() && n.value_from_text("0").is_err());
    }

    #[test]
    fn tunables_come_from_the_parameters() {
        let names = |name: &str| -> Vec<&str> {
            Method::from_name(name)
                .unwrap()
                .tunables()
                .iter()
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(names("integrated-gradients"), ["n_steps", "quadrature"]);
        assert_eq!(names("smoothgrad"), ["n_samples", "noise_level"]);
        assert_eq!(names("lrp-epsilon-gamma-box"), ["epsilon", "gamma"]);
        assert_eq!(names("lrp-epsilon-plus"), ["epsilon"]);
        assert!(names("grad-cam").is_empty());
    }
}

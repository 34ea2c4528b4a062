//! What the command line's numeric flags accept, checked while the arguments are parsed,
//! so that a value out of range is one error line naming the flag, before any work starts.

use std::str::FromStr;
use std::time::Duration;

fn number(text: &str) -> Result<f64, String> {
    text.trim().parse().map_err(|_| format!("'{text}' is not a number"))
}

/// A count: a whole number, at least 1.
pub fn at_least_one<T: FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    let value = text.trim().parse::<T>().ok().filter(|v| *v >= T::from(1));
    value.ok_or_else(|| "must be a whole number, at least 1".into())
}

/// A number that is not negative (0 included).
pub fn non_negative(text: &str) -> Result<f64, String> {
    let value = number(text)?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err("must be a number >= 0".into());
    }
    Ok(value)
}

/// A probability mass in (0, 1].
pub fn probability(text: &str) -> Result<f64, String> {
    let value = number(text)?;
    if !(value > 0.0 && value <= 1.0) {
        return Err("must be above 0 and at most 1".into());
    }
    Ok(value)
}

/// A positive number of seconds.
pub fn seconds(text: &str) -> Result<Duration, String> {
    let value = number(text)?;
    if !(value > 0.0 && value.is_finite()) {
        return Err("must be a positive number of seconds".into());
    }
    Ok(Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_refused() {
        assert_eq!(at_least_one::<i64>("3"), Ok(3));
        assert!(at_least_one::<i64>("0").unwrap_err().contains("at least 1"));
        assert!(at_least_one::<usize>("-1").unwrap_err().contains("at least 1"));
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.5").is_err() && non_negative("nan").is_err());
        assert_eq!(probability("1"), Ok(1.0));
        assert!(probability("0").is_err() && probability("1.5").is_err() && probability("nan").is_err());
        assert_eq!(seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert!(seconds("0").is_err() && seconds("inf").is_err());
    }
}

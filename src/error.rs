//! How a libtorch error reads on the command line: its first line, without the C++ stack
//! that libtorch appends to every message ("Exception raised from ...", "frame #0: ...").

/// What Rust puts before the error when tch unwraps a failed libtorch call.
const UNWRAP_PREFIX: &str = "called `Result::unwrap()` on an `Err` value: ";

/// The first line of a libtorch error message. tch reports a failed call either as an
/// error whose text holds real newlines, or by panicking with the error's Debug form
/// (`Torch("...")`), where each newline is escaped as the two characters `\n`: both
/// forms are cut at the first line break.
pub fn first_line(message: &str) -> &str {
    let message = message.strip_prefix(UNWRAP_PREFIX).unwrap_or(message);
    let message = message.strip_prefix("Torch(\"").unwrap_or(message);
    let end = [message.find('\n'), message.find("\\n"), message.find("Exception raised from")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(message.len());
    message[..end].trim_end().trim_end_matches("\")")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_errors_keep_their_first_line_only() {
        let panic = "called `Result::unwrap()` on an `Err` value: Torch(\"select(): index -1 out of range \
                     for tensor of size [64] at dimension 0\\nException raised from select at \
                     aten/src/ATen/native/TensorShape.cpp:1:\\nframe #0: c10::Error::Error() + 0x1\\n\")";
        assert_eq!(first_line(panic), "select(): index -1 out of range for tensor of size [64] at dimension 0");
        let error = "cannot load weights: Internal torch error: size mismatch for w\nException raised from \
                     load\nframe #0: at::load() + 0x2";
        assert_eq!(first_line(error), "cannot load weights: Internal torch error: size mismatch for w");
        let joined = "shape '[2, 3]' is invalid Exception raised from view_impl";
        assert_eq!(first_line(joined), "shape '[2, 3]' is invalid");
        assert_eq!(first_line("a plain error"), "a plain error");
        assert_eq!(first_line("Torch(\"one line\")"), "one line");
    }
}

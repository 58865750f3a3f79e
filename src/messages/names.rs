//! What a name may contain: ids and names that end up in logs, headers, file names,
//! terminals and other systems' queries (`sender`, `receiver`, `city_id`, `continent`,
//! node ids).
//!
//! Letters of every script are fine; refused are characters that change how text is
//! read rather than what it says: control characters (C0, DEL, C1: newlines that forge
//! log lines or headers, NUL that truncates C strings, ESC that drives terminals), the
//! invisible and direction-changing format characters (zero-width spaces and joiners,
//! bidirectional overrides and isolates, the byte-order mark: a name that shows as
//! `alice` while being another), line and paragraph separators, and noncharacters.

/// Longest name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long (limit {MAX_NAME_BYTES})")]
    TooLong { field: &'static str, len: usize },
    #[error("{field} contains the character U+{code:04X} at byte {at}, which names may not")]
    Forbidden {
        field: &'static str,
        code: u32,
        at: usize,
    },
}

/// Whether `c` may appear in a name.
pub fn allowed_in_name(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{00AD}'                  // soft hyphen (invisible)
            | '\u{061C}'                // Arabic letter mark
            | '\u{180E}'                // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}'   // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}'   // line/paragraph separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'   // word joiner, invisible operators, bidi isolates
            | '\u{FEFF}'                // byte-order mark
            | '\u{FFF9}'..='\u{FFFB}'   // interlinear annotation
            | '\u{FDD0}'..='\u{FDEF}'   // noncharacters
            | '\u{E0000}'..='\u{E007F}' // tags
        )
        || (c as u32 & 0xFFFE) == 0xFFFE)
}

/// Checks a name: not empty, at most [`MAX_NAME_BYTES`], and only characters
/// [`allowed_in_name`].
pub fn check_name(field: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { field });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            field,
            len: name.len(),
        });
    }
    // Plain ASCII names (the common case) need one pass over bytes.
    match name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_graphic() || *c == ' ' || allowed_in_name(*c)))
    {
        Some((at, c)) => Err(NameError::Forbidden {
            field,
            code: c as u32,
            at,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_of_any_script_pass_and_invisible_or_control_characters_do_not() {
        for ok in [
            "bob",
            "Zoë-東京_1",
            "são paulo",
            "a b",
            "0123abcdef",
            "Ωμέγα",
        ] {
            assert_eq!(check_name("receiver", ok), Ok(()), "{ok}");
        }
        for (bad, code) in [
            ("bob\0", 0),
            ("a\nb", 0x0A),
            ("a\rb", 0x0D),
            ("a\tb", 0x09),
            ("\u{1b}[31m", 0x1B),
            ("a\u{7f}", 0x7F),
            ("a\u{85}", 0x85),
            ("alice\u{202e}", 0x202E),
            ("al\u{200b}ice", 0x200B),
            ("\u{feff}bob", 0xFEFF),
            ("a\u{2028}", 0x2028),
            ("a\u{2066}", 0x2066),
            ("a\u{ffff}", 0xFFFF),
            ("a\u{e0041}", 0xE0041),
        ] {
            match check_name("receiver", bad) {
                Err(NameError::Forbidden { code: c, .. }) => assert_eq!(c, code, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(
            check_name("city_id", ""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            check_name("city_id", &"a".repeat(MAX_NAME_BYTES + 1)),
            Err(NameError::TooLong { .. })
        ));
    }
}

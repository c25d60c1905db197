//! The SQL a projection writes, made concrete for one database and one set of tables.

use crate::ProjectionError;

/// Replaces `{table}` with the physical name `resolve` gives and, for SQLite, `$n` with `?n`.
/// Quoted strings and identifiers are left as they are.
pub(crate) fn rewrite(
    sql: &str,
    resolve: impl Fn(&str) -> Option<String>,
    question_params: bool,
) -> Result<String, ProjectionError> {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '{' => {
                let rest = &sql[i + 1..];
                let end = rest.find('}').ok_or_else(|| {
                    ProjectionError::invalid(format!("unclosed '{{' in statement: {sql}"))
                })?;
                let name = &rest[..end];
                let physical = resolve(name).ok_or_else(|| {
                    ProjectionError::invalid(format!(
                        "statement names table '{{{name}}}', which the projection does not declare: {sql}"
                    ))
                })?;
                out.push_str(&physical);
                for _ in 0..=end {
                    chars.next();
                }
            }
            '$' if question_params && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                out.push('?');
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Checks a name used as an identifier (projection, schema): letters, digits, `_`.
pub(crate) fn check_identifier(what: &str, name: &str) -> Result<(), ProjectionError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ProjectionError::invalid(format!(
            "{what} '{name}' must be 1–48 ASCII letters, digits or '_', not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resolve(name: &str) -> Option<String> {
        (name == "accounts").then(|| "\"accounts__rebuild\"".to_owned())
    }

    #[test]
    fn tables_and_parameters_are_rewritten_outside_quotes() {
        let sql = "UPDATE {accounts} SET note = '{x} $1', balance = balance + $2 WHERE id = $1";
        assert_eq!(
            rewrite(sql, resolve, true).unwrap(),
            "UPDATE \"accounts__rebuild\" SET note = '{x} $1', balance = balance + ?2 WHERE id = ?1"
        );
        assert_eq!(
            rewrite(sql, resolve, false).unwrap(),
            "UPDATE \"accounts__rebuild\" SET note = '{x} $1', balance = balance + $2 WHERE id = $1"
        );
    }

    #[test]
    fn unknown_and_unclosed_tables_are_refused() {
        assert!(matches!(
            rewrite("DELETE FROM {orders}", resolve, true),
            Err(ProjectionError::Invalid(m)) if m.contains("'{orders}'")
        ));
        assert!(rewrite("DELETE FROM {accounts", resolve, true).is_err());
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("projection", "accounts_v2").is_ok());
        for bad in ["", "2x", "a-b", "a b", "a\"b", &"x".repeat(49)] {
            assert!(check_identifier("projection", bad).is_err(), "{bad}");
        }
    }
}

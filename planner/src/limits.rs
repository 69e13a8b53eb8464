//! Limits on the SQL text a client can send, checked before anything recursive sees it.
//!
//! sqlparser, DataFusion and Sluice's own lowering walk expressions recursively, and so do
//! the destructors of the trees they build: a 4 KB `SELECT 1+1+...+1` is a tree 2,000 levels
//! deep. sqlparser bounds nesting (parentheses, subqueries) with its recursion limit, but a
//! chain of binary operators is parsed in a loop into a left-deep tree that no limit sees.
//! [`check_statement`] bounds the depth from the tokens alone, in one pass and without
//! recursion, so a statement too deep to plan is refused with a clear error instead of
//! overflowing a stack.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use crate::error::{Error, Result};

/// The longest statement accepted, in bytes (1 MiB).
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// The longest script accepted, in bytes (16 MiB).
pub const MAX_SCRIPT_BYTES: usize = 16 << 20;

/// The most statements in one script.
pub const MAX_STATEMENTS: usize = 100_000;

/// The deepest expression accepted: nested parentheses plus chained operators, as the
/// expression tree a statement parses into is deep.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// How deeply sqlparser may recurse (parentheses, subqueries, function calls).
pub const PARSER_RECURSION_LIMIT: usize = 64;

/// The most windows a HOP or CUMULATE may put one row in (size / slide, size / step).
pub const MAX_WINDOWS_PER_ROW: i64 = 10_000;

/// How many characters of a statement an error message quotes.
pub const QUOTED_CHARS: usize = 120;

/// Refuses a script longer than [`MAX_SCRIPT_BYTES`].
///
/// # Errors
/// [`Error::Limit`] naming the size and the limit.
pub fn check_script_size(sql: &str) -> Result<()> {
    if sql.len() > MAX_SCRIPT_BYTES {
        return Err(Error::Limit(format!(
            "the script is {} bytes, over the limit of {MAX_SCRIPT_BYTES} bytes",
            sql.len()
        )));
    }
    Ok(())
}

/// Refuses a statement (its tokens, from the first to the one before its `;`) that is
/// longer than [`MAX_STATEMENT_BYTES`] or whose expressions nest deeper than
/// [`MAX_EXPRESSION_DEPTH`].
///
/// The depth is bounded from above: every open parenthesis is a level, and so is every
/// binary operator since the last separator (a comma or a clause keyword) at the same level.
///
/// # Errors
/// [`Error::Limit`] naming the measure, the limit and where the statement stands.
pub fn check_statement(tokens: &[TokenWithSpan], bytes: usize) -> Result<()> {
    if bytes > MAX_STATEMENT_BYTES {
        return Err(Error::Limit(format!(
            "the statement is {bytes} bytes, over the limit of {MAX_STATEMENT_BYTES} bytes"
        )));
    }
    // Operators since the last separator, one counter per open parenthesis.
    let mut levels: Vec<usize> = vec![0];
    // The depth of the levels below the innermost: the sum of their (operators + 1).
    let mut below = 0usize;
    for t in tokens {
        match &t.token {
            Token::LParen | Token::LBracket => {
                let ops = levels.last().copied().unwrap_or(0);
                below += ops + 1;
                levels.push(0);
            }
            Token::RParen | Token::RBracket => {
                if levels.len() > 1 {
                    levels.pop();
                    let ops = levels.last().copied().unwrap_or(0);
                    below = below.saturating_sub(ops + 1);
                }
            }
            Token::Comma => {
                if let Some(ops) = levels.last_mut() {
                    *ops = 0;
                }
            }
            token if resets(token) => {
                if let Some(ops) = levels.last_mut() {
                    *ops = 0;
                }
            }
            token if is_operator(token) => {
                if let Some(ops) = levels.last_mut() {
                    *ops += 1;
                }
            }
            _ => {}
        }
        let depth = below + levels.last().copied().unwrap_or(0);
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(Error::Limit(format!(
                "an expression nests more than {MAX_EXPRESSION_DEPTH} levels deep (parentheses and chained operators) at Line: {}, Column: {}",
                t.span.start.line, t.span.start.column
            )));
        }
    }
    Ok(())
}

/// Clause keywords: what follows is a new expression.
fn resets(token: &Token) -> bool {
    matches!(token, Token::Word(w) if matches!(
        w.keyword,
        Keyword::SELECT
            | Keyword::FROM
            | Keyword::WHERE
            | Keyword::GROUP
            | Keyword::HAVING
            | Keyword::ORDER
            | Keyword::LIMIT
            | Keyword::UNION
            | Keyword::WHEN
            | Keyword::THEN
            | Keyword::ELSE
            | Keyword::ON
            | Keyword::JOIN
    ))
}

/// Tokens that join two expressions into one node of the tree.
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::XOR
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::SIMILAR
        ),
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::Mod
        | Token::DuckIntDiv
        | Token::StringConcat
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Caret
        | Token::Ampersand
        | Token::Pipe
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::DoubleColon
        | Token::Arrow
        | Token::LongArrow
        | Token::Tilde
        | Token::ExclamationMark => true,
        _ => false,
    }
}

/// At most [`QUOTED_CHARS`] characters of `sql`, for an error message.
pub fn quote(sql: &str) -> String {
    let mut chars = sql.char_indices();
    match chars.nth(QUOTED_CHARS) {
        None => sql.to_string(),
        Some((end, _)) => format!("{}... ({} bytes)", &sql[..end], sql.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    fn check(sql: &str) -> Result<()> {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        check_statement(&tokens, sql.len())
    }

    #[test]
    fn a_long_operator_chain_is_refused() {
        let sql = format!("SELECT {}", vec!["1"; 2000].join("+"));
        let err = check(&sql).unwrap_err().to_string();
        assert!(err.contains("nests more than 256 levels"), "{err}");
        let sql = format!("SELECT * FROM t WHERE {}", vec!["a = 1"; 1000].join(" AND "));
        assert!(check(&sql).is_err());
    }

    #[test]
    fn wide_but_shallow_statements_pass() {
        let sql = format!("SELECT {} FROM t", vec!["a + b * c"; 5000].join(", "));
        check(&sql).unwrap();
        let sql = format!(
            "SELECT CASE {} END FROM t",
            (0..2000).map(|i| format!("WHEN a = {i} THEN {i}")).collect::<Vec<_>>().join(" ")
        );
        check(&sql).unwrap();
        let sql = format!("SELECT {}", vec!["1"; 200].join("+"));
        check(&sql).unwrap();
    }

    #[test]
    fn parentheses_and_operators_add_up() {
        let sql = format!("SELECT {}1{}", "(1+".repeat(130), ")".repeat(130));
        assert!(check(&sql).is_err());
        let sql = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        check(&sql).unwrap();
    }

    #[test]
    fn a_statement_over_the_size_limit_is_refused() {
        let tokens = Tokenizer::new(&GenericDialect {}, "SELECT 1")
            .tokenize_with_location()
            .unwrap();
        let err = check_statement(&tokens, MAX_STATEMENT_BYTES + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("over the limit of 1048576 bytes"), "{err}");
    }

    #[test]
    fn quote_cuts_long_statements() {
        let long = "x".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < 200 && q.ends_with("(10000 bytes)"), "{q}");
        assert_eq!(quote("SELECT 1"), "SELECT 1");
    }
}

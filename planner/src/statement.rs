//! Sluice's SQL dialect: splits a script into statements and parses each, the standard parts
//! with sqlparser and the streaming ones (`CREATE SOURCE ... WATERMARK FOR`, `CREATE SINK`,
//! `SHOW SOURCES`, ...) with sqlparser's token-level API, keeping line and column positions.

use std::fmt;

use datafusion::sql::sqlparser::ast::{
    ColumnDef, Expr, Ident, ObjectName, Query, SqlOption, Statement as SqlStatement, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result};
use crate::limits;

/// The kinds of catalog object a statement can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `SOURCE`
    Source,
    /// `SINK`
    Sink,
    /// `VIEW`
    View,
    /// `MATERIALIZED VIEW`
    MaterializedView,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Source => "source",
            ObjectKind::Sink => "sink",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized view",
        })
    }
}

/// `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone)]
pub struct WatermarkClause {
    /// The event-time column.
    pub column: Ident,
    /// The watermark expression, such as `date_time - INTERVAL '5' SECOND`.
    pub expr: Expr,
}

/// What a sink reads.
#[derive(Debug, Clone)]
pub enum SinkInput {
    /// `CREATE SINK s AS query`
    Query(Box<Query>),
    /// `CREATE SINK s FROM relation`
    Relation(ObjectName),
}

/// One statement of the dialect.
// Built once per SQL statement and matched right away: boxing the large variant would buy
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Statement {
    /// `CREATE SOURCE name [(columns [, WATERMARK FOR col AS expr])] WITH (...)`
    CreateSource {
        /// Source name.
        name: String,
        /// Declared columns; empty when the connector knows its schema.
        columns: Vec<ColumnDef>,
        /// The watermark clause, if any.
        watermark: Option<WatermarkClause>,
        /// `WITH` options, keys lower-cased.
        options: Vec<(String, String)>,
        /// `IF NOT EXISTS`
        if_not_exists: bool,
    },
    /// `CREATE SINK name [FROM relation | AS query] WITH (...)`
    CreateSink {
        /// Sink name.
        name: String,
        /// What it reads.
        input: SinkInput,
        /// `WITH` options.
        options: Vec<(String, String)>,
    },
    /// `CREATE [OR REPLACE] [MATERIALIZED] VIEW name AS query`
    CreateView {
        /// View name.
        name: String,
        /// Its query.
        query: Box<Query>,
        /// `MATERIALIZED`
        materialized: bool,
        /// `OR REPLACE`
        or_replace: bool,
        /// `WITH` options (materialized views).
        options: Vec<(String, String)>,
    },
    /// `DROP kind [IF EXISTS] name`
    Drop {
        /// What is dropped.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// `IF EXISTS`
        if_exists: bool,
    },
    /// `SHOW SOURCES|SINKS|VIEWS|MATERIALIZED VIEWS`
    Show(ObjectKind),
    /// `SHOW CHECKPOINTS`: the complete checkpoints of every pipeline.
    ShowCheckpoints,
    /// `DESCRIBE name`
    Describe(String),
    /// `EXPLAIN query`
    Explain(Box<Query>),
    /// A query: continuous over streams, or answered from a materialized view's state.
    Query(Box<Query>),
    /// `COPY (query) TO 'url' [(FORMAT parquet) | STORED AS ...]`: a one-off export, run by
    /// DataFusion over the current state; the statement's text is in [`ParsedStatement::sql`].
    Copy,
}

/// A statement with where it stands in the script.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    /// The statement.
    pub statement: Statement,
    /// 1-based index in the script.
    pub index: usize,
    /// 1-based line of its first token.
    pub line: u64,
    /// 1-based column of its first token.
    pub column: u64,
    /// Its text.
    pub sql: String,
}

impl ParsedStatement {
    /// "statement 2 (line 7)": how errors point at a statement.
    pub fn locator(&self) -> String {
        format!("statement {} (line {})", self.index, self.line)
    }
}

/// Parses a script of `;`-separated statements.
///
/// The script is tokenized once and split at its top-level `;`s; each statement is checked
/// against the [`limits`](crate::limits) and parsed on its own, so the time taken grows with
/// the script's length, not its square.
///
/// # Errors
/// [`Error::Syntax`] with the line and column of the first error; [`Error::Limit`] for a
/// script or statement over a limit.
pub fn parse_script(sql: &str) -> Result<Vec<ParsedStatement>> {
    limits::check_script_size(sql)?;
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize_with_location()?;
    let mut offsets = Offsets::new(sql);
    let mut out = Vec::new();
    for tokens in split_statements(tokens) {
        let index = out.len() + 1;
        if index > limits::MAX_STATEMENTS {
            return Err(Error::Limit(format!(
                "the script holds more than {} statements",
                limits::MAX_STATEMENTS
            )));
        }
        let (Some(first), Some(last)) = (tokens.first(), tokens.last()) else {
            continue;
        };
        let start = first.span.start;
        let begin = offsets.at(start);
        let end = offsets.at(last.span.end).max(begin);
        let text = sql.get(begin..end).unwrap_or("").trim().to_string();
        let located = |e: Error| match e {
            Error::Syntax(m) => Error::Syntax(format!("statement {index} (line {}): {m}", start.line)),
            Error::Limit(m) => Error::Limit(format!("statement {index} (line {}): {m}", start.line)),
            other => other,
        };
        limits::check_statement(&tokens, end - begin).map_err(located)?;
        let mut parser = Parser::new(&dialect)
            .with_recursion_limit(limits::PARSER_RECURSION_LIMIT)
            .with_tokens_with_locations(tokens);
        let statement = parse_statement(&mut parser).map_err(located)?;
        let end = parser.peek_token();
        if end.token != Token::EOF {
            return Err(Error::Syntax(format!(
                "statement {index} (line {}): expected ';' or end of input, found '{}' at Line: {}, Column: {}",
                start.line, end.token, end.span.start.line, end.span.start.column
            )));
        }
        out.push(ParsedStatement {
            statement,
            index,
            line: start.line,
            column: start.column,
            sql: text,
        });
    }
    Ok(out)
}

/// The tokens of each statement: split at top-level `;`s, without leading or trailing
/// whitespace; statements of no token are left out.
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut out = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    let mut depth = 0i64;
    for t in tokens {
        match t.token {
            Token::SemiColon if depth <= 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::EOF => continue,
            _ => {}
        }
        if current.is_empty() && matches!(t.token, Token::Whitespace(_)) {
            continue;
        }
        current.push(t);
    }
    out.push(current);
    for s in &mut out {
        while s.last().is_some_and(|t| matches!(t.token, Token::Whitespace(_))) {
            s.pop();
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Byte offsets of token locations (1-based lines, 1-based columns in characters), found
/// by a cursor that only moves forward: each statement's text costs its own length.
struct Offsets<'a> {
    sql: &'a str,
    line: u64,
    column: u64,
    byte: usize,
}

impl<'a> Offsets<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            sql,
            line: 1,
            column: 1,
            byte: 0,
        }
    }

    /// The byte offset of `loc`; locations before the cursor give the cursor's offset.
    fn at(&mut self, loc: Location) -> usize {
        let rest = self.sql.get(self.byte..).unwrap_or("");
        for ch in rest.chars() {
            if (self.line, self.column) >= (loc.line, loc.column) {
                break;
            }
            self.byte += ch.len_utf8();
            if ch == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        self.byte
    }
}

/// Parses a script that must hold exactly one statement.
///
/// # Errors
/// On a syntax error, or a script of zero or several statements.
pub fn parse_one(sql: &str) -> Result<ParsedStatement> {
    let mut all = parse_script(sql)?;
    match all.len() {
        1 => all
            .pop()
            .ok_or_else(|| Error::Internal("statement vanished".into())),
        0 => Err(Error::Syntax("empty statement".into())),
        n => Err(Error::Syntax(format!("expected one statement, found {n}"))),
    }
}

fn peek_word(parser: &Parser, n: usize) -> Option<String> {
    match parser.peek_nth_token(n).token {
        Token::Word(w) => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn expect_word(parser: &mut Parser, word: &str) -> Result<()> {
    let tok = parser.next_token();
    match &tok.token {
        Token::Word(w) if w.value.eq_ignore_ascii_case(word) => Ok(()),
        _ => parser.expected(word, tok).map_err(Error::from),
    }
}

fn parse_statement(parser: &mut Parser) -> Result<Statement> {
    let w0 = peek_word(parser, 0);
    let w1 = peek_word(parser, 1);
    let w2 = peek_word(parser, 2);
    match (w0.as_deref(), w1.as_deref(), w2.as_deref()) {
        (Some("CREATE"), Some("SOURCE"), _) => parse_create_source(parser),
        (Some("CREATE"), Some("SINK"), _) => parse_create_sink(parser),
        (Some("CREATE"), Some("VIEW" | "MATERIALIZED"), _)
        | (Some("CREATE"), Some("OR"), Some("REPLACE")) => parse_create_view(parser),
        (Some("DROP"), _, _) => parse_drop(parser),
        (Some("COPY"), _, _) => skip_statement(parser).map(|()| Statement::Copy),
        (Some("SHOW"), _, _) => parse_show(parser),
        (Some("DESCRIBE" | "DESC"), _, _) => {
            parser.next_token();
            Ok(Statement::Describe(object_name(
                parser.parse_object_name(false)?,
            )))
        }
        (Some("EXPLAIN"), _, _) => {
            parser.next_token();
            Ok(Statement::Explain(parser.parse_query()?))
        }
        _ => match parser.parse_statement()? {
            SqlStatement::Query(q) => Ok(Statement::Query(q)),
            other => {
                let text = other.to_string();
                let head: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                Err(Error::unsupported(format!(
                    "the statement '{head} ...'; Sluice runs CREATE SOURCE/SINK/VIEW/MATERIALIZED VIEW, DROP, SHOW, DESCRIBE, EXPLAIN and SELECT"
                )))
            }
        },
    }
}

/// Consumes the tokens of one statement, up to a top-level `;` or the end.
fn skip_statement(parser: &mut Parser) -> Result<()> {
    let mut depth = 0i64;
    loop {
        match parser.peek_token().token {
            Token::EOF => return Ok(()),
            Token::SemiColon if depth == 0 => return Ok(()),
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        parser.next_token();
    }
}

fn object_name(name: ObjectName) -> String {
    name.0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(|i| {
                    if i.quote_style.is_some() {
                        i.value.clone()
                    } else {
                        i.value.to_ascii_lowercase()
                    }
                })
                .unwrap_or_else(|| p.to_string())
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn parse_if_not_exists(parser: &mut Parser) -> bool {
    parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS])
}

fn parse_create_source(parser: &mut Parser) -> Result<Statement> {
    expect_word(parser, "CREATE")?;
    expect_word(parser, "SOURCE")?;
    let if_not_exists = parse_if_not_exists(parser);
    let name = object_name(parser.parse_object_name(false)?);
    let mut columns = Vec::new();
    let mut watermark = None;
    if parser.consume_token(&Token::LParen) {
        loop {
            if peek_word(parser, 0).as_deref() == Some("WATERMARK") {
                parser.next_token();
                parser.expect_keyword(Keyword::FOR)?;
                let column = parser.parse_identifier()?;
                parser.expect_keyword(Keyword::AS)?;
                let expr = parser.parse_expr()?;
                if watermark.is_some() {
                    return Err(Error::plan(format!(
                        "source '{name}' declares more than one WATERMARK"
                    )));
                }
                watermark = Some(WatermarkClause { column, expr });
            } else {
                columns.push(parser.parse_column_def()?);
            }
            if parser.consume_token(&Token::Comma) {
                continue;
            }
            parser.expect_token(&Token::RParen)?;
            break;
        }
    }
    let options = parse_with(parser)?;
    Ok(Statement::CreateSource {
        name,
        columns,
        watermark,
        options,
        if_not_exists,
    })
}

fn parse_create_sink(parser: &mut Parser) -> Result<Statement> {
    expect_word(parser, "CREATE")?;
    expect_word(parser, "SINK")?;
    let name = object_name(parser.parse_object_name(false)?);
    // Both `WITH (...) AS query` and `AS query WITH (...)` / `FROM rel WITH (...)` are accepted.
    let mut options = if parser.peek_keyword(Keyword::WITH) {
        parse_with(parser)?
    } else {
        Vec::new()
    };
    let input = if parser.parse_keyword(Keyword::FROM) {
        SinkInput::Relation(parser.parse_object_name(false)?)
    } else if parser.parse_keyword(Keyword::AS) {
        SinkInput::Query(parser.parse_query()?)
    } else {
        let tok = parser.peek_token();
        return parser
            .expected("FROM relation or AS query", tok)
            .map_err(Error::from);
    };
    if options.is_empty() {
        options = parse_with(parser)?;
    }
    Ok(Statement::CreateSink {
        name,
        input,
        options,
    })
}

fn parse_create_view(parser: &mut Parser) -> Result<Statement> {
    expect_word(parser, "CREATE")?;
    let or_replace = parser.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    let materialized = parser.parse_keyword(Keyword::MATERIALIZED);
    parser.expect_keyword(Keyword::VIEW)?;
    let name = object_name(parser.parse_object_name(false)?);
    let options = if parser.peek_keyword(Keyword::WITH) {
        parse_with(parser)?
    } else {
        Vec::new()
    };
    parser.expect_keyword(Keyword::AS)?;
    let query = parser.parse_query()?;
    Ok(Statement::CreateView {
        name,
        query,
        materialized,
        or_replace,
        options,
    })
}

fn parse_object_kind(parser: &mut Parser, plural: bool) -> Result<ObjectKind> {
    let tok = parser.next_token();
    let word = match &tok.token {
        Token::Word(w) => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let s = if plural { "S" } else { "" };
    let kind = match word.as_str() {
        w if w == format!("SOURCE{s}") => ObjectKind::Source,
        w if w == format!("SINK{s}") => ObjectKind::Sink,
        w if w == format!("VIEW{s}") => ObjectKind::View,
        "MATERIALIZED" => {
            expect_word(parser, &format!("VIEW{s}"))?;
            ObjectKind::MaterializedView
        }
        _ => {
            let what = if plural {
                "SOURCES, SINKS, VIEWS or MATERIALIZED VIEWS"
            } else {
                "SOURCE, SINK, VIEW or MATERIALIZED VIEW"
            };
            return parser.expected(what, tok).map_err(Error::from);
        }
    };
    Ok(kind)
}

fn parse_drop(parser: &mut Parser) -> Result<Statement> {
    expect_word(parser, "DROP")?;
    let kind = parse_object_kind(parser, false)?;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = object_name(parser.parse_object_name(false)?);
    Ok(Statement::Drop {
        kind,
        name,
        if_exists,
    })
}

fn parse_show(parser: &mut Parser) -> Result<Statement> {
    expect_word(parser, "SHOW")?;
    if let Token::Word(w) = &parser.peek_token().token
        && w.value.eq_ignore_ascii_case("CHECKPOINTS")
    {
        parser.next_token();
        return Ok(Statement::ShowCheckpoints);
    }
    Ok(Statement::Show(parse_object_kind(parser, true)?))
}

fn parse_with(parser: &mut Parser) -> Result<Vec<(String, String)>> {
    let opts = parser.parse_options(Keyword::WITH)?;
    let options = opts
        .into_iter()
        .map(|o| match o {
            SqlOption::KeyValue { key, value } => {
                let key = key.value.to_ascii_lowercase();
                let value = match value {
                    Expr::Value(v) => match v.value {
                        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
                        Value::Number(n, _) => n,
                        Value::Boolean(b) => b.to_string(),
                        other => {
                            return Err(Error::plan(format!(
                                "option '{key}' must be a string or a number, got {other}"
                            )));
                        }
                    },
                    Expr::Identifier(i) => i.value,
                    Expr::UnaryOp {
                        op: datafusion::sql::sqlparser::ast::UnaryOperator::Minus,
                        expr,
                    } => format!("-{expr}"),
                    other => {
                        return Err(Error::plan(format!(
                            "option '{key}' must be a string or a number, got {other}"
                        )));
                    }
                };
                Ok((key, value))
            }
            other => Err(Error::plan(format!(
                "options are written key = 'value', got {other}"
            ))),
        })
        .collect::<Result<Vec<(String, String)>>>()?;
    // Keys are case-insensitive: a second `Path` must not silently win over `path`.
    let mut seen = std::collections::BTreeSet::new();
    if let Some((key, _)) = options.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(Error::plan(format!("option '{key}' is given twice")));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let sql = "CREATE SOURCE bids (
            auction BIGINT, price BIGINT, date_time TIMESTAMP,
            WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND
        ) WITH (connector = 'file', path = 'data/bids.csv', format = 'csv');

        CREATE SINK q2 WITH (connector = 'parquet', path = 'out/q2') AS
        SELECT auction, window_start, window_end, count(*) AS bids
        FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)
        GROUP BY auction, window_start, window_end;
        SHOW MATERIALIZED VIEWS; DROP SOURCE IF EXISTS x; DESCRIBE bids; EXPLAIN SELECT * FROM bids";
        let stmts = parse_script(sql).unwrap();
        assert_eq!(stmts.len(), 6);
        match &stmts[0].statement {
            Statement::CreateSource {
                name,
                columns,
                watermark,
                options,
                ..
            } => {
                assert_eq!(name, "bids");
                assert_eq!(columns.len(), 3);
                assert_eq!(watermark.as_ref().unwrap().column.value, "date_time");
                assert_eq!(options[2], ("format".to_string(), "csv".to_string()));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            stmts[1].statement,
            Statement::CreateSink {
                input: SinkInput::Query(_),
                ..
            }
        ));
        assert_eq!(stmts[1].line, 6);
        assert!(matches!(
            stmts[2].statement,
            Statement::Show(ObjectKind::MaterializedView)
        ));
        assert!(matches!(
            stmts[3].statement,
            Statement::Drop {
                kind: ObjectKind::Source,
                if_exists: true,
                ..
            }
        ));
    }

    #[test]
    fn syntax_errors_carry_statement_and_position() {
        let err = parse_script("SHOW SOURCES;\nSELEC * FROM x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("statement 2 (line 2)"), "{err}");
        let err = parse_script("CREATE SOURCE s (a BIGINT,) WITH (connector='x')")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Line: 1"), "{err}");
    }

    #[test]
    fn sink_from_relation_with_options_after() {
        let s = parse_one("CREATE SINK out FROM mv WITH (connector = 'console')").unwrap();
        match s.statement {
            Statement::CreateSink {
                input: SinkInput::Relation(r),
                options,
                ..
            } => {
                assert_eq!(r.to_string(), "mv");
                assert_eq!(options.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}

//! Data-document validation (management-api.md §10): the syntactic check every policy
//! version passes before it is recorded, and the validation report's preview.
//!
//! Comments and string literals are stripped first, so a forbidden name inside a string or
//! a comment is not a reference; then delimiters are balanced and the top-level statements
//! (package, imports, rule heads) are collected. The content is also parsed by the Rego
//! parser the bundle compiler uses, so a document accepted here cannot fail to parse later.

use std::collections::BTreeSet;

/// Longest accepted content, in characters.
pub const CONTENT_MAX_CHARS: usize = 262_144;
/// The only package a data document may declare.
pub const PACKAGE: &str = "caracal.authz";
/// The line-start comment every data document carries.
pub const DIRECTIVE: &str = "caracal:data-document";
/// The rule names a data document may define.
pub const ALLOWED_RULES: [&str; 6] = [
    "app_ids",
    "grants",
    "confinement",
    "restrict",
    "risk",
    "approval_tiers",
];
/// Built-ins that reach the network, the clock or the runtime (§9).
pub const FORBIDDEN_BUILTINS: [&str; 9] = [
    "http.send",
    "net.lookup_ip_addr",
    "net.cidr_contains",
    "net.cidr_intersects",
    "net.cidr_expand",
    "net.cidr_merge",
    "opa.runtime",
    "rand.intn",
    "time.now_ns",
];

/// Why a document was refused; `Display` is the wire `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("empty_policy")]
    Empty,
    #[error("content_too_large")]
    TooLarge,
    #[error("unterminated_string")]
    UnterminatedString,
    #[error("unbalanced_delimiters")]
    UnbalancedDelimiters,
    #[error("missing_package_declaration")]
    MissingPackage,
    #[error("invalid_package_name")]
    InvalidPackageName,
    #[error("forbidden_builtin:{0}")]
    ForbiddenBuiltin(&'static str),
    #[error("must_use_package_caracal_authz")]
    WrongPackage,
    #[error("must_be_data_document")]
    NotDataDocument,
    #[error("data_document_must_not_define_result")]
    DefinesResult,
    #[error("data_document_must_define_data")]
    NoRules,
    #[error("data_document_rule_not_allowed:{0}")]
    RuleNotAllowed(String),
    /// Serval also parses the document with the Rego parser (an extension: Caracal would
    /// only find this when a policy-set version is compiled).
    #[error("rego_parse_error:{0}")]
    Parse(String),
}

/// What a valid document declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSummary {
    pub package: String,
    /// Top-level rule names in order of first definition.
    pub rules: Vec<String>,
    /// `input.…` references (sorted, unique), for the preview.
    pub inputs_referenced: Vec<String>,
    /// `data.…` references (sorted, unique).
    pub data_referenced: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Punct(char),
    /// A string or number literal (content irrelevant to the checks).
    Literal,
    Newline,
}

/// Splits code into tokens with comments and string literals removed.
fn tokenize(src: &str) -> Result<Vec<Tok>, DocumentError> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push(Tok::Newline);
                        break;
                    }
                }
            }
            '"' => {
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => break,
                        _ => {}
                    }
                }
                if !closed {
                    return Err(DocumentError::UnterminatedString);
                }
                out.push(Tok::Literal);
            }
            '`' => {
                if !chars.by_ref().any(|c| c == '`') {
                    return Err(DocumentError::UnterminatedString);
                }
                out.push(Tok::Literal);
            }
            '\n' => out.push(Tok::Newline),
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut id = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        id.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Ident(id));
            }
            c if c.is_ascii_digit() => {
                while chars
                    .peek()
                    .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '.' || *n == '_')
                {
                    chars.next();
                }
                out.push(Tok::Literal);
            }
            c if c.is_whitespace() => {}
            c => out.push(Tok::Punct(c)),
        }
    }
    Ok(out)
}

fn balanced(toks: &[Tok]) -> bool {
    let mut stack = Vec::new();
    for t in toks {
        match t {
            Tok::Punct(c @ ('(' | '[' | '{')) => stack.push(*c),
            Tok::Punct(c @ (')' | ']' | '}')) => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty()
}

/// Dotted references `a.b.c` starting at each identifier (used for built-ins and refs).
fn dotted_at(toks: &[Tok], i: usize) -> String {
    let mut s = match &toks[i] {
        Tok::Ident(id) => id.clone(),
        _ => return String::new(),
    };
    let mut j = i + 1;
    while j + 1 < toks.len() {
        match (&toks[j], &toks[j + 1]) {
            (Tok::Punct('.'), Tok::Ident(id)) => {
                s.push('.');
                s.push_str(id);
                j += 2;
            }
            _ => break,
        }
    }
    s
}

fn preceded_by_dot(toks: &[Tok], i: usize) -> bool {
    i > 0 && toks[i - 1] == Tok::Punct('.')
}

fn has_directive(src: &str) -> bool {
    src.lines().any(|l| {
        l.strip_prefix('#')
            .map(|rest| {
                let rest = rest.trim_start();
                rest.strip_prefix(DIRECTIVE)
                    .is_some_and(|after| after.is_empty() || after.starts_with(char::is_whitespace))
            })
            .unwrap_or(false)
    })
}

fn is_package_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('.').all(|seg| {
            let mut cs = seg.chars();
            cs.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// Statement heads at brace depth 0, one per line: `(first token index, line tokens)`.
fn top_level_lines(toks: &[Tok]) -> Vec<Vec<usize>> {
    let mut lines = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0i32;
    let mut line_started_at_depth0 = true;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Newline => {
                if !current.is_empty() {
                    lines.push(std::mem::take(&mut current));
                }
                line_started_at_depth0 = depth == 0;
            }
            _ => {
                if line_started_at_depth0 {
                    current.push(i);
                }
                match t {
                    Tok::Punct('(' | '[' | '{') => depth += 1,
                    Tok::Punct(')' | ']' | '}') => depth -= 1,
                    _ => {}
                }
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// Checks a policy's content as a data document (§10) and summarizes it.
pub fn validate(content: &str) -> Result<DocumentSummary, DocumentError> {
    if content.trim().is_empty() {
        return Err(DocumentError::Empty);
    }
    if content.chars().count() > CONTENT_MAX_CHARS {
        return Err(DocumentError::TooLarge);
    }
    let toks = tokenize(content)?;
    if !balanced(&toks) {
        return Err(DocumentError::UnbalancedDelimiters);
    }
    let lines = top_level_lines(&toks);
    let mut package: Option<String> = None;
    let mut rules: Vec<String> = Vec::new();
    for line in &lines {
        let first = line[0];
        let Tok::Ident(word) = &toks[first] else {
            continue;
        };
        match word.as_str() {
            "package" => {
                if package.is_some() {
                    continue;
                }
                let rest: Vec<&Tok> = line[1..].iter().map(|&i| &toks[i]).collect();
                let mut path = String::new();
                let mut ok = !rest.is_empty();
                for t in &rest {
                    match t {
                        Tok::Ident(id) => path.push_str(id),
                        Tok::Punct('.') => path.push('.'),
                        _ => ok = false,
                    }
                }
                package = Some(if ok { path } else { String::new() });
            }
            "import" | "else" => {}
            "default" => {
                if let Some(&next) = line.get(1) {
                    if let Tok::Ident(name) = &toks[next] {
                        if !rules.contains(name) {
                            rules.push(name.clone());
                        }
                    }
                }
            }
            name => {
                // A continuation line of a multi-line expression is not a head: a head is
                // followed by an assignment, a key, arguments, `if`, `contains` or a body.
                let next = line.get(1).map(|&i| &toks[i]);
                let is_head = matches!(
                    next,
                    None | Some(Tok::Punct(':' | '=' | '[' | '(' | '{' | '.'))
                ) || matches!(next, Some(Tok::Ident(k)) if k == "if" || k == "contains");
                if is_head && !rules.iter().any(|r| r == name) {
                    rules.push(name.to_owned());
                }
            }
        }
    }
    let Some(package) = package else {
        return Err(DocumentError::MissingPackage);
    };
    if !is_package_path(&package) {
        return Err(DocumentError::InvalidPackageName);
    }
    let mut inputs = BTreeSet::new();
    let mut datas = BTreeSet::new();
    for i in 0..toks.len() {
        if preceded_by_dot(&toks, i) {
            continue;
        }
        let dotted = dotted_at(&toks, i);
        if dotted.is_empty() {
            continue;
        }
        if let Some(b) = FORBIDDEN_BUILTINS
            .iter()
            .find(|b| dotted == **b || dotted.starts_with(&format!("{b}.")))
        {
            return Err(DocumentError::ForbiddenBuiltin(b));
        }
        if dotted == "input" || dotted.starts_with("input.") {
            inputs.insert(dotted);
        } else if dotted.starts_with("data.") {
            datas.insert(dotted);
        }
    }
    if package != PACKAGE {
        return Err(DocumentError::WrongPackage);
    }
    if !has_directive(content) {
        return Err(DocumentError::NotDataDocument);
    }
    if rules.iter().any(|r| r == "result") {
        return Err(DocumentError::DefinesResult);
    }
    if rules.is_empty() {
        return Err(DocumentError::NoRules);
    }
    if let Some(bad) = rules.iter().find(|r| !ALLOWED_RULES.contains(&r.as_str())) {
        return Err(DocumentError::RuleNotAllowed(bad.clone()));
    }
    parse(content)?;
    Ok(DocumentSummary {
        package,
        rules,
        inputs_referenced: inputs.into_iter().collect(),
        data_referenced: datas.into_iter().collect(),
    })
}

/// A Rego v1 engine whose source limits fit any valid document: data documents are often
/// generated, with long single-line objects (the parser's default is 1,024 columns).
pub(crate) fn engine() -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    let limits = regorus::PolicyLengthConfig {
        max_col: std::num::NonZeroU32::new(CONTENT_MAX_CHARS as u32 + 1)
            .unwrap_or(std::num::NonZeroU32::MIN),
        max_file_bytes: std::num::NonZeroUsize::new(4 * CONTENT_MAX_CHARS + 1)
            .unwrap_or(std::num::NonZeroUsize::MIN),
        max_lines: std::num::NonZeroUsize::new(CONTENT_MAX_CHARS + 1)
            .unwrap_or(std::num::NonZeroUsize::MIN),
    };
    engine.set_policy_length_config(limits);
    engine
}

/// Parses with the same Rego v1 parser the bundle compiler uses.
fn parse(content: &str) -> Result<(), DocumentError> {
    let mut engine = engine();
    engine
        .add_policy("document.rego".to_owned(), content.to_owned())
        .map(|_| ())
        .map_err(|e| DocumentError::Parse(first_line(&e.to_string())))
}

/// The telling line of an engine message: its `error: …` line with the location, else the
/// first non-empty line (the rest is a source excerpt).
pub(crate) fn first_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let location = lines
        .iter()
        .find_map(|l| l.strip_prefix("--> "))
        .unwrap_or_default();
    let text = match lines.iter().find_map(|l| l.strip_prefix("error: ")) {
        Some(e) if location.is_empty() => e.to_owned(),
        Some(e) => format!("{e} at {location}"),
        None => lines.first().copied().unwrap_or("parse error").to_owned(),
    };
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\napp_ids := {\"bot\": \"a1\"}\n\ngrants := {\"resource://x\": {\"application\": \"bot\", \"roles\": {\"clerk\": [\"x:read\"]}}}\n";

    fn reason(content: &str) -> String {
        validate(content).unwrap_err().to_string()
    }

    #[test]
    fn a_good_document_lists_its_rules() {
        let s = validate(GOOD).unwrap();
        assert_eq!(s.package, "caracal.authz");
        assert_eq!(s.rules, vec!["app_ids", "grants"]);
        assert!(s.inputs_referenced.is_empty());
    }

    #[test]
    fn every_reason() {
        let doc = |body: &str| {
            format!("# caracal:data-document\npackage caracal.authz\nimport rego.v1\n{body}\n")
        };
        assert_eq!(reason("  \n"), "empty_policy");
        assert_eq!(
            reason(&"a".repeat(CONTENT_MAX_CHARS + 1)),
            "content_too_large"
        );
        assert_eq!(
            reason(&doc("app_ids := {\"a\": \"b}")),
            "unterminated_string"
        );
        assert_eq!(
            reason(&doc("app_ids := {\"a\": [1}")),
            "unbalanced_delimiters"
        );
        assert_eq!(
            reason("# caracal:data-document\napp_ids := {}\n"),
            "missing_package_declaration"
        );
        assert_eq!(
            reason("# caracal:data-document\npackage caracal..authz\napp_ids := {}\n"),
            "invalid_package_name"
        );
        assert_eq!(
            reason(&doc("app_ids := {\"a\": http.send({})}")),
            "forbidden_builtin:http.send"
        );
        assert_eq!(
            reason(&doc(
                "risk := [{\"scope\": \"a\", \"tier\": sprintf(\"%d\", [time.now_ns()])}]"
            )),
            "forbidden_builtin:time.now_ns"
        );
        assert_eq!(
            reason("# caracal:data-document\npackage other\napp_ids := {}\n"),
            "must_use_package_caracal_authz"
        );
        assert_eq!(
            reason("package caracal.authz\napp_ids := {}\n"),
            "must_be_data_document"
        );
        assert_eq!(
            reason(&doc("result := {\"decision\": \"allow\"}")),
            "data_document_must_not_define_result"
        );
        assert_eq!(reason(&doc("")), "data_document_must_define_data");
        assert_eq!(
            reason(&doc("allow if { true }")),
            "data_document_rule_not_allowed:allow"
        );
        assert!(reason(&doc("app_ids := := {}")).starts_with("rego_parse_error:"));
    }

    #[test]
    fn names_in_strings_and_comments_are_not_references() {
        let d = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n# http.send is mentioned here\napp_ids := {\"time.now_ns\": \"a\"}\n";
        assert!(validate(d).is_ok());
    }

    #[test]
    fn multi_line_rules_and_partial_heads() {
        let d = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\ngrants[\"resource://a\"] := {\n  \"application\": \"bot\",\n  \"roles\": {}\n}\n\nrisk contains {\"scope\": \"a\", \"tier\": \"high\"}\ndefault restrict := []\n";
        let s = validate(d).unwrap();
        assert_eq!(s.rules, vec!["grants", "risk", "restrict"]);
    }

    #[test]
    fn input_references_are_reported() {
        let d = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\napp_ids := {\"a\": input.principal.id}\n";
        assert_eq!(
            validate(d).unwrap().inputs_referenced,
            vec!["input.principal.id"]
        );
    }
}

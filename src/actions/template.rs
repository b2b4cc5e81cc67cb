//! Alert text templates: the subset of Go `text/template` syntax that kimup promises.
//!
//! Supported:
//! - literal text, passed through unchanged (a lone `}}` is literal too);
//! - `{{ .Namespace }}`, `{{ .Name }}`, `{{ .ImageName }}`, `{{ .BaseTag }}`, `{{ .NewTag }}`,
//!   `{{ .ActualTag }}`, `{{ .AvailableTags }}` (printed like Go prints a `[]string`: `[a b c]`),
//!   with or without spaces inside the braces, and `$.Var` for the same values;
//! - trim markers `{{- ` and ` -}}`, which drop the white space before / after the action;
//! - `{{ range .AvailableTags }}...{{ . }}...{{ end }}`;
//! - `{{ join .AvailableTags ", " }}` (a kimup convenience; Go has no built-in `join`), with a
//!   double-quoted (escapes `\n \t \r \\ \"`) or back-quoted separator;
//! - comments `{{/* ... */}}`.
//!
//! Everything else is rejected when parsing, with the line and column of the offending `{{`,
//! so a bad template is caught by [`validate`] instead of at alert time. Inside `range`, `.` is
//! the current tag as in Go, so `.NewTag` there is an error (Go fails at execution); `$.NewTag`
//! reaches the top-level value.
//!
//! Limits, because one kimup renders the templates of every tenant on its runtime workers:
//! `range` nests at most [`MAX_NESTING`] deep (checked when parsing), one rendering runs at
//! most [`MAX_ITERATIONS`] range iterations in total and writes at most [`MAX_OUTPUT`] bytes.
//! Reaching one is a [`TemplateError`] pointing at the action that reached it.

/// Default alert subject.
pub const DEFAULT_SUBJECT: &str = "[kimup] New tag {{ .NewTag }} for {{ .ImageName }}";

/// Default alert body.
pub const DEFAULT_BODY: &str = "Kimup alert for image update:
{{ .Namespace }}/{{ .Name }}

Image **{{ .ImageName }}:{{ .ActualTag }}** has a new tag available: **{{ .NewTag }}**

Available tags:
{{ range .AvailableTags -}}
- {{ . }}
{{ end }}";

/// Deepest nesting of `range`: each level multiplies the work by the number of tags, and the
/// renderer recurses once per level.
pub const MAX_NESTING: usize = 3;

/// Most `range` iterations one rendering may run, all ranges together: three nested ranges over
/// 1,000 tags would otherwise run 10^9 on a runtime worker of the process that serves every
/// cluster.
pub const MAX_ITERATIONS: usize = 100_000;

/// Largest rendered text, in bytes (Slack takes 40,000 characters, Discord 2,000; e-mail bodies
/// of this size are already unusual).
pub const MAX_OUTPUT: usize = 64 * 1024;

const VARIABLES: &str =
    ".Namespace, .Name, .ImageName, .BaseTag, .NewTag, .ActualTag, .AvailableTags";

/// Values an alert template can refer to.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AlertContext {
    /// Namespace of the image resource (`.Namespace`).
    pub namespace: String,
    /// Name of the image resource (`.Name`).
    pub name: String,
    /// Image repository, e.g. `ghcr.io/org/app` (`.ImageName`).
    pub image_name: String,
    /// Tag the rules started from (`.BaseTag`).
    pub base_tag: String,
    /// Tag the rules selected (`.NewTag`).
    pub new_tag: String,
    /// Tag currently deployed (`.ActualTag`).
    pub actual_tag: String,
    /// Tags found in the registry (`.AvailableTags`).
    pub available_tags: Vec<String>,
    /// Set when the alert reports the failed rollout of `new_tag` rather than a new tag: what
    /// failed. Not a template variable; the alert then uses kimup's own text (see
    /// [`render_part`]).
    #[serde(skip)]
    pub failure: Option<String>,
}

/// Subject of a failed-rollout alert.
pub const FAILED_SUBJECT: &str = "[kimup] Rollout of {{ .NewTag }} failed for {{ .ImageName }}";

/// Body of a failed-rollout alert (the failure's detail follows it, untemplated).
pub const FAILED_BODY: &str = "Kimup alert for a failed rollout:
{{ .Namespace }}/{{ .Name }}

Image **{{ .ImageName }}:{{ .NewTag }}** failed to roll out. Clusters promoted after this one will not take it; a newer tag starts a new promotion.
";

/// Which part of an alert a template renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The e-mail subject.
    Subject,
    /// The message.
    Body,
}

/// Renders a part of an alert: the AlertConfig's template (`custom`, else the default) for a new
/// tag; kimup's own text for a failed rollout, which a new-tag template would misreport. The
/// failure's detail (workload names and Kubernetes messages) is appended as text, never parsed
/// as a template.
pub fn render_part(
    part: Part,
    custom: Option<&str>,
    ctx: &AlertContext,
) -> Result<String, TemplateError> {
    match (&ctx.failure, part) {
        (Some(_), Part::Subject) => render(FAILED_SUBJECT, ctx),
        (Some(detail), Part::Body) => Ok(format!("{}\n{detail}\n", render(FAILED_BODY, ctx)?)),
        (None, Part::Subject) => render(custom.unwrap_or(DEFAULT_SUBJECT), ctx),
        (None, Part::Body) => render(custom.unwrap_or(DEFAULT_BODY), ctx),
    }
}

/// A template that cannot be parsed, with the 1-based position of the offending action.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("template error at line {line}, column {column}: {kind}")]
pub struct TemplateError {
    /// 1-based line of the action's `{{`.
    pub line: usize,
    /// 1-based column (in characters) of the action's `{{`.
    pub column: usize,
    /// What is wrong.
    pub kind: TemplateErrorKind,
}

/// What is wrong with a template.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TemplateErrorKind {
    /// `{{` without a closing `}}`.
    #[error("unclosed action: missing \"}}}}\"")]
    UnclosedAction,
    /// `{{/*` without a closing `*/}}`.
    #[error("unclosed comment: missing \"*/}}}}\"")]
    UnclosedComment,
    /// A string literal without its closing quote.
    #[error("unterminated string literal")]
    UnterminatedString,
    /// A string literal with an escape other than `\n \t \r \\ \"`.
    #[error("unsupported escape sequence \"\\{0}\" in string literal")]
    BadEscape(char),
    /// `{{ }}`.
    #[error("empty action")]
    EmptyAction,
    /// A `.Field` that is not one of the alert variables.
    #[error("unknown variable .{0}, expected one of {VARIABLES}")]
    UnknownVariable(String),
    /// A `.Field` used inside `range`, where `.` is the current tag.
    #[error(
        "inside range, . is the current tag, so .{0} is not available: use $.{0} to reach \
         the top-level value"
    )]
    FieldInsideRange(String),
    /// `{{ . }}` outside `range`.
    #[error("{{{{ . }}}} is only available inside {{{{ range .AvailableTags }}}}")]
    DotOutsideRange,
    /// `range` or `join` over something other than `.AvailableTags`.
    #[error("{0} needs a list, and only .AvailableTags is one")]
    NotAList(String),
    /// `range`, `end` or `join` with the wrong arguments.
    #[error("{0}")]
    BadArguments(&'static str),
    /// `{{ end }}` with no open `range`.
    #[error("{{{{ end }}}} without a matching {{{{ range }}}}")]
    UnexpectedEnd,
    /// `{{ range }}` never closed.
    #[error("{{{{ range }}}} is not closed by {{{{ end }}}}")]
    UnclosedRange,
    /// `range` nested deeper than [`MAX_NESTING`].
    #[error("range nested more than {MAX_NESTING} levels deep")]
    TooDeep,
    /// More than [`MAX_ITERATIONS`] `range` iterations in one rendering.
    #[error(
        "rendering needs more than {MAX_ITERATIONS} range iterations (nested ranges multiply \
         the number of tags): nest fewer ranges"
    )]
    TooManyIterations,
    /// A rendered text longer than [`MAX_OUTPUT`] bytes.
    #[error("the rendered text is longer than {MAX_OUTPUT} bytes")]
    TooLong,
    /// Any other action.
    #[error(
        "unsupported action {0:?}: only variables ({VARIABLES}), {{{{ range .AvailableTags }}}}, \
         {{{{ . }}}}, {{{{ end }}}} and {{{{ join .AvailableTags \", \" }}}} are supported"
    )]
    UnsupportedAction(String),
}

/// Renders `template` with the values of `ctx`, within [`MAX_ITERATIONS`] and [`MAX_OUTPUT`].
pub fn render(template: &str, ctx: &AlertContext) -> Result<String, TemplateError> {
    let nodes = parse(template)?;
    let mut renderer = Renderer {
        ctx,
        tags_len: ctx.available_tags.iter().map(String::len).sum(),
        iterations: 0,
        out: String::with_capacity(template.len().min(MAX_OUTPUT)),
    };
    renderer
        .nodes(&nodes, None)
        .map_err(|(offset, kind)| error_at(template, offset, kind))?;
    Ok(renderer.out)
}

/// Checks that `template` parses, without rendering it.
pub fn validate(template: &str) -> Result<(), TemplateError> {
    parse(template).map(|_| ())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Namespace,
    Name,
    ImageName,
    BaseTag,
    NewTag,
    ActualTag,
    AvailableTags,
}

impl Var {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Namespace" => Var::Namespace,
            "Name" => Var::Name,
            "ImageName" => Var::ImageName,
            "BaseTag" => Var::BaseTag,
            "NewTag" => Var::NewTag,
            "ActualTag" => Var::ActualTag,
            "AvailableTags" => Var::AvailableTags,
            _ => return None,
        })
    }
}

/// A piece of a parsed template, with the byte offset where it starts: limits are reached while
/// rendering, and the error points at the piece that reached them.
#[derive(Debug, PartialEq)]
struct Node {
    start: usize,
    kind: NodeKind,
}

#[derive(Debug, PartialEq)]
enum NodeKind {
    Text(String),
    Var(Var),
    /// `{{ . }}` inside `range`.
    Dot,
    Join(String),
    Range(Vec<Node>),
}

#[derive(Debug, PartialEq)]
enum Token {
    /// `.Name`
    Field(String),
    /// `$.Name`
    Root(String),
    /// `.`
    Dot,
    Ident(String),
    Str(String),
    Other,
}

/// Rendering state: the text so far and what is left of the budget.
struct Renderer<'a> {
    ctx: &'a AlertContext,
    /// Bytes of all the tags together, to size a `join` or `.AvailableTags` before writing it.
    tags_len: usize,
    /// `range` iterations run so far, all ranges together.
    iterations: usize,
    out: String,
}

/// A limit reached while rendering, at the byte offset of the piece that reached it.
type RenderError = (usize, TemplateErrorKind);

impl Renderer<'_> {
    fn nodes(&mut self, nodes: &[Node], dot: Option<&str>) -> Result<(), RenderError> {
        // A copy of the reference, so that iterating over the tags does not borrow `self`.
        let ctx = self.ctx;
        for node in nodes {
            match &node.kind {
                NodeKind::Text(text) => self.push(node.start, text)?,
                NodeKind::Var(var) => self.var(node.start, *var)?,
                NodeKind::Dot => self.push(node.start, dot.unwrap_or_default())?,
                NodeKind::Join(separator) => self.join(node.start, separator, "", "")?,
                NodeKind::Range(body) => {
                    for tag in &ctx.available_tags {
                        self.iterations += 1;
                        if self.iterations > MAX_ITERATIONS {
                            return Err((node.start, TemplateErrorKind::TooManyIterations));
                        }
                        self.nodes(body, Some(tag))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Fails when `len` more bytes would take the text past [`MAX_OUTPUT`].
    fn reserve(&self, start: usize, len: usize) -> Result<(), RenderError> {
        if self.out.len().saturating_add(len) > MAX_OUTPUT {
            return Err((start, TemplateErrorKind::TooLong));
        }
        Ok(())
    }

    fn push(&mut self, start: usize, text: &str) -> Result<(), RenderError> {
        self.reserve(start, text.len())?;
        self.out.push_str(text);
        Ok(())
    }

    /// The tags joined by `separator` between `open` and `close`, sized before it is written.
    fn join(
        &mut self,
        start: usize,
        separator: &str,
        open: &str,
        close: &str,
    ) -> Result<(), RenderError> {
        let tags = &self.ctx.available_tags;
        let len = separator
            .len()
            .saturating_mul(tags.len().saturating_sub(1))
            .saturating_add(self.tags_len)
            .saturating_add(open.len() + close.len());
        self.reserve(start, len)?;
        self.out.push_str(open);
        for (i, tag) in tags.iter().enumerate() {
            if i > 0 {
                self.out.push_str(separator);
            }
            self.out.push_str(tag);
        }
        self.out.push_str(close);
        Ok(())
    }

    fn var(&mut self, start: usize, var: Var) -> Result<(), RenderError> {
        let ctx = self.ctx;
        let text = match var {
            Var::Namespace => &ctx.namespace,
            Var::Name => &ctx.name,
            Var::ImageName => &ctx.image_name,
            Var::BaseTag => &ctx.base_tag,
            Var::NewTag => &ctx.new_tag,
            Var::ActualTag => &ctx.actual_tag,
            // Go's fmt prints a []string as `[a b c]`.
            Var::AvailableTags => return self.join(start, " ", "[", "]"),
        };
        self.push(start, text)
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// 1-based line and column (in characters) of byte `offset`.
fn position(template: &str, offset: usize) -> (usize, usize) {
    let before = &template[..offset.min(template.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn error_at(template: &str, offset: usize, kind: TemplateErrorKind) -> TemplateError {
    let (line, column) = position(template, offset);
    TemplateError { line, column, kind }
}

struct Parser<'a> {
    template: &'a str,
    /// Bodies of the open `range`s, outermost first, with the offset of their `{{`.
    open: Vec<(Vec<Node>, usize)>,
    current: Vec<Node>,
    /// Set by ` -}}`: strip leading white space from the next text.
    trim_next: bool,
}

fn parse(template: &str) -> Result<Vec<Node>, TemplateError> {
    let mut parser = Parser {
        template,
        open: Vec::new(),
        current: Vec::new(),
        trim_next: false,
    };
    let mut cursor = 0;
    while let Some(found) = template[cursor..].find("{{") {
        let start = cursor + found;
        parser.push_text(cursor, &template[cursor..start]);
        cursor = parser.action(start)?;
    }
    parser.push_text(cursor, &template[cursor..]);
    if let Some((_, start)) = parser.open.last() {
        return Err(parser.error(*start, TemplateErrorKind::UnclosedRange));
    }
    Ok(parser.current)
}

impl Parser<'_> {
    fn error(&self, offset: usize, kind: TemplateErrorKind) -> TemplateError {
        error_at(self.template, offset, kind)
    }

    /// Adds the text found at byte `start`.
    fn push_text(&mut self, start: usize, text: &str) {
        let kept = if std::mem::take(&mut self.trim_next) {
            text.trim_start_matches(is_space)
        } else {
            text
        };
        if !kept.is_empty() {
            self.push(
                start + (text.len() - kept.len()),
                NodeKind::Text(kept.to_string()),
            );
        }
    }

    fn push(&mut self, start: usize, kind: NodeKind) {
        self.current.push(Node { start, kind });
    }

    /// Parses the action whose `{{` is at `start`; returns the offset just past its `}}`.
    fn action(&mut self, start: usize) -> Result<usize, TemplateError> {
        let inner_start = start + 2;
        let rest = &self.template[inner_start..];
        let left_trim = rest.starts_with('-') && rest[1..].starts_with(is_space);
        if left_trim
            && let Some(Node {
                kind: NodeKind::Text(text),
                ..
            }) = self.current.last_mut()
        {
            let kept = text.trim_end_matches(is_space).len();
            text.truncate(kept);
            if text.is_empty() {
                self.current.pop();
            }
        }
        let body_start = if left_trim {
            inner_start + 1
        } else {
            inner_start
        };
        let body = &self.template[body_start..];
        if body.trim_start_matches(is_space).starts_with("/*") {
            return self.comment(start, body_start);
        }
        let close = find_close(body).map_err(|kind| self.error(start, kind))?;
        let mut content = &body[..close];
        let end = body_start + close + 2;
        if content.ends_with('-') && content[..content.len() - 1].ends_with(is_space) {
            content = &content[..content.len() - 1];
            self.trim_next = true;
        }
        self.command(start, content)?;
        Ok(end)
    }

    /// Skips `{{/* ... */}}`; Go only allows white space between `*/` and `}}` via ` -}}`.
    fn comment(&mut self, start: usize, body_start: usize) -> Result<usize, TemplateError> {
        let template = self.template;
        let body = &template[body_start..];
        let after = body.find("*/").map(|close| &body[close + 2..]);
        if let Some(rest) = after.and_then(|after| after.strip_prefix("}}")) {
            return Ok(template.len() - rest.len());
        }
        if let Some(after) = after {
            let trimmed = after.trim_start_matches(is_space);
            if let Some(rest) = trimmed.strip_prefix("-}}")
                && trimmed.len() < after.len()
            {
                self.trim_next = true;
                return Ok(template.len() - rest.len());
            }
        }
        Err(self.error(start, TemplateErrorKind::UnclosedComment))
    }

    fn command(&mut self, start: usize, content: &str) -> Result<(), TemplateError> {
        let template = self.template;
        let err = |kind| error_at(template, start, kind);
        let tokens = tokenize(content).map_err(err)?;
        let in_range = !self.open.is_empty();
        match tokens.as_slice() {
            [] => Err(err(TemplateErrorKind::EmptyAction)),
            [Token::Dot] if in_range => {
                self.push(start, NodeKind::Dot);
                Ok(())
            }
            [Token::Dot] => Err(err(TemplateErrorKind::DotOutsideRange)),
            [token @ (Token::Field(name) | Token::Root(name))] => {
                let rooted = matches!(token, Token::Root(_));
                let var = self.variable(start, name, rooted, in_range)?;
                self.push(start, NodeKind::Var(var));
                Ok(())
            }
            [Token::Ident(word), args @ ..] => match (word.as_str(), args) {
                ("range", [list]) => {
                    self.list(start, "range", list, in_range)?;
                    // Checked while parsing, so that no depth of nesting is ever built.
                    if self.open.len() >= MAX_NESTING {
                        return Err(err(TemplateErrorKind::TooDeep));
                    }
                    let outer = std::mem::take(&mut self.current);
                    self.open.push((outer, start));
                    Ok(())
                }
                ("range", _) => Err(err(TemplateErrorKind::BadArguments(
                    "range expects one list, as in {{ range .AvailableTags }}",
                ))),
                ("end", []) => match self.open.pop() {
                    Some((outer, range_start)) => {
                        let body = std::mem::replace(&mut self.current, outer);
                        self.push(range_start, NodeKind::Range(body));
                        Ok(())
                    }
                    None => Err(err(TemplateErrorKind::UnexpectedEnd)),
                },
                ("end", _) => Err(err(TemplateErrorKind::BadArguments(
                    "end takes no arguments",
                ))),
                ("join", [list, Token::Str(separator)]) => {
                    self.list(start, "join", list, in_range)?;
                    self.push(start, NodeKind::Join(separator.clone()));
                    Ok(())
                }
                ("join", _) => Err(err(TemplateErrorKind::BadArguments(
                    "join expects a list and a quoted separator, as in \
                     {{ join .AvailableTags \", \" }}",
                ))),
                _ => Err(err(TemplateErrorKind::UnsupportedAction(brief(content)))),
            },
            _ => Err(err(TemplateErrorKind::UnsupportedAction(brief(content)))),
        }
    }

    /// Resolves `.Name` (or `$.Name` when `rooted`) to an alert variable.
    fn variable(
        &self,
        start: usize,
        name: &str,
        rooted: bool,
        in_range: bool,
    ) -> Result<Var, TemplateError> {
        let var = Var::from_name(name).ok_or_else(|| {
            self.error(start, TemplateErrorKind::UnknownVariable(name.to_string()))
        })?;
        if in_range && !rooted {
            return Err(self.error(start, TemplateErrorKind::FieldInsideRange(name.to_string())));
        }
        Ok(var)
    }

    /// Checks that `token` names `.AvailableTags`, the only list.
    fn list(
        &self,
        start: usize,
        action: &str,
        token: &Token,
        in_range: bool,
    ) -> Result<(), TemplateError> {
        let not_a_list = |what: &str| {
            self.error(
                start,
                TemplateErrorKind::NotAList(format!("{action} over {what}")),
            )
        };
        match token {
            Token::Field(name) | Token::Root(name) => {
                let rooted = matches!(token, Token::Root(_));
                match self.variable(start, name, rooted, in_range)? {
                    Var::AvailableTags => Ok(()),
                    _ => Err(not_a_list(&describe(token))),
                }
            }
            _ => Err(not_a_list(&describe(token))),
        }
    }
}

/// An action's content as quoted in an error: the start is enough to find it, and the message
/// lands in an Image's status.
fn brief(content: &str) -> String {
    const QUOTED: usize = 60;
    let content = content.trim_matches(is_space);
    match content.char_indices().nth(QUOTED) {
        Some((cut, _)) => format!("{}…", &content[..cut]),
        None => content.to_string(),
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Field(name) => format!(".{name}"),
        Token::Root(name) => format!("$.{name}"),
        Token::Dot => ".".to_string(),
        Token::Ident(word) => word.clone(),
        Token::Str(text) => format!("{text:?}"),
        Token::Other => "an unsupported value".to_string(),
    }
}

/// Offset of the `}}` closing an action, skipping over string literals.
fn find_close(body: &str) -> Result<usize, TemplateErrorKind> {
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        chars.next();
                    }
                    Some((_, '"')) => break,
                    Some((_, '\n')) | None => return Err(TemplateErrorKind::UnterminatedString),
                    Some(_) => {}
                }
            },
            '`' => loop {
                match chars.next() {
                    Some((_, '`')) => break,
                    None => return Err(TemplateErrorKind::UnterminatedString),
                    Some(_) => {}
                }
            },
            '}' if body[i + 1..].starts_with('}') => return Ok(i),
            _ => {}
        }
    }
    Err(TemplateErrorKind::UnclosedAction)
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits an action's content into tokens; anything unsupported becomes [`Token::Other`].
fn tokenize(content: &str) -> Result<Vec<Token>, TemplateErrorKind> {
    let mut tokens = Vec::new();
    let mut rest = content.trim_start_matches(is_space);
    while let Some(c) = rest.chars().next() {
        let (token, len) = match c {
            '"' => read_quoted(rest)?,
            '`' => {
                let close = rest[1..]
                    .find('`')
                    .ok_or(TemplateErrorKind::UnterminatedString)?;
                (Token::Str(rest[1..=close].to_string()), close + 2)
            }
            '.' | '$' => {
                let prefix = if c == '$' && rest[1..].starts_with('.') {
                    2
                } else {
                    1
                };
                let name_len = rest[prefix..]
                    .find(|ch: char| !is_ident_char(ch))
                    .unwrap_or(rest.len() - prefix);
                let name = &rest[prefix..prefix + name_len];
                let len = prefix + name_len;
                let token = match (c, prefix, name.is_empty()) {
                    ('.', _, true) => Token::Dot,
                    ('.', _, false) => Token::Field(name.to_string()),
                    (_, 2, false) => Token::Root(name.to_string()),
                    _ => Token::Other,
                };
                (token, len)
            }
            c if c.is_alphabetic() || c == '_' => {
                let len = rest
                    .find(|ch: char| !is_ident_char(ch))
                    .unwrap_or(rest.len());
                (Token::Ident(rest[..len].to_string()), len)
            }
            _ => {
                let len = rest.find(is_space).unwrap_or(rest.len());
                (Token::Other, len)
            }
        };
        let after = &rest[len..];
        // A token glued to the next one (`.A.B`, `.Name|x`, `"a"b`) is beyond our subset.
        let token = match after.chars().next() {
            Some(next) if !is_space(next) => Token::Other,
            _ => token,
        };
        tokens.push(token);
        rest = after.trim_start_matches(is_space);
    }
    Ok(tokens)
}

/// Reads a double-quoted Go string literal at the start of `text`; returns it and its length.
fn read_quoted(text: &str) -> Result<(Token, usize), TemplateErrorKind> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Token::Str(value), i + 1)),
            '\\' => {
                let escaped = match chars.next() {
                    Some((_, 'n')) => '\n',
                    Some((_, 't')) => '\t',
                    Some((_, 'r')) => '\r',
                    Some((_, '\\')) => '\\',
                    Some((_, '"')) => '"',
                    Some((_, other)) => return Err(TemplateErrorKind::BadEscape(other)),
                    None => return Err(TemplateErrorKind::UnterminatedString),
                };
                value.push(escaped);
            }
            '\n' => return Err(TemplateErrorKind::UnterminatedString),
            _ => value.push(c),
        }
    }
    Err(TemplateErrorKind::UnterminatedString)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx() -> AlertContext {
        AlertContext {
            namespace: "prod".to_string(),
            name: "web".to_string(),
            image_name: "ghcr.io/acme/web".to_string(),
            base_tag: "v1.0.0".to_string(),
            new_tag: "v1.2.0".to_string(),
            actual_tag: "v1.1.0".to_string(),
            available_tags: vec!["v1.1.0".to_string(), "v1.2.0".to_string()],
            failure: None,
        }
    }

    #[test]
    fn a_failed_rollout_is_told_in_kimups_words() {
        let custom = Some("new {{ .NewTag }}!");
        assert_eq!(
            render_part(Part::Body, custom, &ctx()).expect("body"),
            "new v1.2.0!"
        );
        let failed = AlertContext {
            failure: Some("Deployment web: {{ .Name }} ProgressDeadlineExceeded".into()),
            ..ctx()
        };
        assert_eq!(
            render_part(Part::Subject, Some("new {{ .NewTag }}"), &failed).expect("subject"),
            "[kimup] Rollout of v1.2.0 failed for ghcr.io/acme/web"
        );
        let body = render_part(Part::Body, custom, &failed).expect("body");
        assert!(body.contains("prod/web"), "{body}");
        assert!(
            body.contains("**ghcr.io/acme/web:v1.2.0** failed to roll out"),
            "{body}"
        );
        // The detail is text, not a template.
        assert!(
            body.ends_with("Deployment web: {{ .Name }} ProgressDeadlineExceeded\n"),
            "{body}"
        );
    }

    fn ok(template: &str) -> String {
        render(template, &ctx()).unwrap_or_else(|e| panic!("{template:?}: {e}"))
    }

    fn fail(template: &str) -> TemplateError {
        let err = render(template, &ctx()).unwrap_err();
        assert_eq!(validate(template), Err(err.clone()));
        err
    }

    fn kind(template: &str) -> TemplateErrorKind {
        fail(template).kind
    }

    #[test]
    fn literal_text_passes_through() {
        assert_eq!(ok(""), "");
        assert_eq!(
            ok("plain text\n with } and }} and { braces"),
            "plain text\n with } and }} and { braces"
        );
        assert_eq!(ok("ünïcödé ✓"), "ünïcödé ✓");
    }

    #[test]
    fn every_variable() {
        assert_eq!(
            ok(
                "{{ .Namespace }}|{{ .Name }}|{{ .ImageName }}|{{ .BaseTag }}|{{ .NewTag }}|{{ .ActualTag }}|{{ .AvailableTags }}"
            ),
            "prod|web|ghcr.io/acme/web|v1.0.0|v1.2.0|v1.1.0|[v1.1.0 v1.2.0]"
        );
    }

    #[test]
    fn whitespace_inside_braces_is_optional() {
        assert_eq!(ok("{{.NewTag}}"), "v1.2.0");
        assert_eq!(ok("{{   .NewTag\t}}"), "v1.2.0");
        assert_eq!(ok("{{\n.NewTag\n}}"), "v1.2.0");
    }

    #[test]
    fn root_variables() {
        assert_eq!(ok("{{ $.NewTag }}"), "v1.2.0");
        assert_eq!(
            ok("{{ range .AvailableTags }}{{ $.Name }}:{{ . }} {{ end }}"),
            "web:v1.1.0 web:v1.2.0 "
        );
    }

    #[test]
    fn empty_list_prints_like_go() {
        let empty = AlertContext::default();
        assert_eq!(render("{{ .AvailableTags }}", &empty).unwrap(), "[]");
        assert_eq!(
            render("a{{ range .AvailableTags }}x{{ end }}b", &empty).unwrap(),
            "ab"
        );
        assert_eq!(
            render("{{ join .AvailableTags \", \" }}", &empty).unwrap(),
            ""
        );
    }

    #[test]
    fn trim_markers() {
        assert_eq!(ok("a  \n\t{{- .Name }}"), "aweb");
        assert_eq!(ok("{{ .Name -}}  \n b"), "webb");
        assert_eq!(ok("a \n {{- .Name -}} \n b"), "awebb");
        // Without a space the dash is not a trim marker; Go would read `-3` as a number.
        assert!(matches!(
            kind("a {{-.Name}}"),
            TemplateErrorKind::UnsupportedAction(_)
        ));
    }

    #[test]
    fn trim_markers_in_range() {
        let template = "Tags:\n{{- range .AvailableTags }}\n  - {{ . }}\n{{- end }}\n";
        assert_eq!(ok(template), "Tags:\n  - v1.1.0\n  - v1.2.0\n");
    }

    #[test]
    fn range_over_tags() {
        assert_eq!(
            ok("{{ range .AvailableTags }}[{{ . }}]{{ end }}"),
            "[v1.1.0][v1.2.0]"
        );
        assert_eq!(
            ok("{{range .AvailableTags}}{{.}},{{end}}"),
            "v1.1.0,v1.2.0,"
        );
        assert_eq!(
            ok("{{ range $.AvailableTags }}<{{ . }}>{{ end }}"),
            "<v1.1.0><v1.2.0>"
        );
    }

    #[test]
    fn join_tags() {
        assert_eq!(ok("{{ join .AvailableTags \", \" }}"), "v1.1.0, v1.2.0");
        assert_eq!(ok("{{join .AvailableTags \"\\n\"}}"), "v1.1.0\nv1.2.0");
        assert_eq!(ok("{{ join .AvailableTags `}} ` }}"), "v1.1.0}} v1.2.0");
        assert_eq!(
            ok("{{ join .AvailableTags \"\\\"}}\" }}"),
            "v1.1.0\"}}v1.2.0"
        );
    }

    #[test]
    fn comments() {
        assert_eq!(ok("a{{/* note {{ .Bogus }} */}}b"), "ab");
        assert_eq!(ok("a {{- /* note */ -}} b"), "ab");
    }

    #[test]
    fn defaults_render() {
        let c = ctx();
        assert_eq!(
            render(DEFAULT_SUBJECT, &c).unwrap(),
            "[kimup] New tag v1.2.0 for ghcr.io/acme/web"
        );
        // kimup's default text, tag list included.
        assert_eq!(
            render(DEFAULT_BODY, &c).unwrap(),
            "Kimup alert for image update:\nprod/web\n\n\
             Image **ghcr.io/acme/web:v1.1.0** has a new tag available: **v1.2.0**\n\n\
             Available tags:\n- v1.1.0\n- v1.2.0\n"
        );
    }

    #[test]
    fn error_unknown_variable() {
        let err = fail("Hello {{ .Tag }}");
        assert_eq!(
            err.to_string(),
            "template error at line 1, column 7: unknown variable .Tag, expected one of \
             .Namespace, .Name, .ImageName, .BaseTag, .NewTag, .ActualTag, .AvailableTags"
        );
        // Names are case-sensitive, as in Go.
        assert_eq!(
            kind("{{ .newtag }}"),
            TemplateErrorKind::UnknownVariable("newtag".into())
        );
        assert_eq!(
            kind("{{ $.Nope }}"),
            TemplateErrorKind::UnknownVariable("Nope".into())
        );
    }

    #[test]
    fn error_positions_count_lines_and_characters() {
        let err = fail("line one\nçà {{ .Nope }}");
        assert_eq!((err.line, err.column), (2, 4));
        let err = fail("a\nb\n\n  {{ if .Name }}x{{ end }}");
        assert_eq!((err.line, err.column), (4, 3));
    }

    #[test]
    fn error_unclosed_action() {
        let err = fail("abc {{ .Name ");
        assert_eq!(
            err.to_string(),
            "template error at line 1, column 5: unclosed action: missing \"}}\""
        );
        assert_eq!(kind("{{"), TemplateErrorKind::UnclosedAction);
        assert_eq!(kind("{{ .Name }"), TemplateErrorKind::UnclosedAction);
    }

    #[test]
    fn error_unclosed_comment() {
        assert_eq!(
            fail("{{/* never closed }}").to_string(),
            "template error at line 1, column 1: unclosed comment: missing \"*/}}\""
        );
        assert_eq!(kind("{{/* x */ }}"), TemplateErrorKind::UnclosedComment);
    }

    #[test]
    fn error_strings() {
        assert_eq!(
            fail("{{ join .AvailableTags \", }}").to_string(),
            "template error at line 1, column 1: unterminated string literal"
        );
        assert_eq!(
            kind("{{ join .AvailableTags `x }}"),
            TemplateErrorKind::UnterminatedString
        );
        assert_eq!(
            fail("{{ join .AvailableTags \"\\q\" }}").to_string(),
            "template error at line 1, column 1: unsupported escape sequence \"\\q\" in string \
             literal"
        );
    }

    #[test]
    fn error_empty_action() {
        assert_eq!(
            fail("x {{ }}").to_string(),
            "template error at line 1, column 3: empty action"
        );
        assert_eq!(kind("{{- -}}"), TemplateErrorKind::EmptyAction);
    }

    #[test]
    fn error_dot_outside_range() {
        assert_eq!(
            fail("{{ . }}").to_string(),
            "template error at line 1, column 1: {{ . }} is only available inside \
             {{ range .AvailableTags }}"
        );
    }

    #[test]
    fn error_field_inside_range() {
        assert_eq!(
            fail("{{ range .AvailableTags }}{{ .NewTag }}{{ end }}").to_string(),
            "template error at line 1, column 27: inside range, . is the current tag, so \
             .NewTag is not available: use $.NewTag to reach the top-level value"
        );
        assert_eq!(
            kind("{{ range .AvailableTags }}{{ range .AvailableTags }}{{ end }}{{ end }}"),
            TemplateErrorKind::FieldInsideRange("AvailableTags".into())
        );
    }

    #[test]
    fn error_range_and_join_need_the_list() {
        assert_eq!(
            fail("{{ range .NewTag }}{{ end }}").to_string(),
            "template error at line 1, column 1: range over .NewTag needs a list, and only \
             .AvailableTags is one"
        );
        assert_eq!(
            kind("{{ join .Name \",\" }}"),
            TemplateErrorKind::NotAList("join over .Name".into())
        );
        assert_eq!(
            kind("{{ join \"a\" \",\" }}"),
            TemplateErrorKind::NotAList("join over \"a\"".into())
        );
    }

    #[test]
    fn error_bad_arguments() {
        assert_eq!(
            fail("{{ range }}{{ end }}").to_string(),
            "template error at line 1, column 1: range expects one list, as in \
             {{ range .AvailableTags }}"
        );
        assert_eq!(
            kind("{{ range $i, $t := .AvailableTags }}{{ end }}"),
            TemplateErrorKind::BadArguments(
                "range expects one list, as in {{ range .AvailableTags }}"
            )
        );
        assert_eq!(
            kind("{{ range .AvailableTags }}{{ end .X }}"),
            TemplateErrorKind::BadArguments("end takes no arguments")
        );
        assert_eq!(
            fail("{{ join .AvailableTags }}").to_string(),
            "template error at line 1, column 1: join expects a list and a quoted separator, \
             as in {{ join .AvailableTags \", \" }}"
        );
        assert!(matches!(
            kind("{{ join .AvailableTags \",\" \"x\" }}"),
            TemplateErrorKind::BadArguments(_)
        ));
    }

    #[test]
    fn error_end_without_range() {
        assert_eq!(
            fail("a {{ end }}").to_string(),
            "template error at line 1, column 3: {{ end }} without a matching {{ range }}"
        );
    }

    #[test]
    fn error_unclosed_range() {
        assert_eq!(
            fail("x\n {{ range .AvailableTags }}{{ . }}").to_string(),
            "template error at line 2, column 2: {{ range }} is not closed by {{ end }}"
        );
    }

    #[test]
    fn error_unsupported_actions() {
        assert_eq!(
            fail("{{ if .NewTag }}x{{ end }}").to_string(),
            "template error at line 1, column 1: unsupported action \"if .NewTag\": only \
             variables (.Namespace, .Name, .ImageName, .BaseTag, .NewTag, .ActualTag, \
             .AvailableTags), {{ range .AvailableTags }}, {{ . }}, {{ end }} and \
             {{ join .AvailableTags \", \" }} are supported"
        );
        for template in [
            "{{ .NewTag | upper }}",
            "{{ .Image.Name }}",
            "{{ printf \"%s\" .Name }}",
            "{{ $x := .Name }}",
            "{{ $ }}",
            "{{ 42 }}",
            "{{ \"lit\" }}",
            "{{ else }}",
            "{{ template \"x\" }}",
            "{{ (.Name) }}",
        ] {
            assert!(
                matches!(kind(template), TemplateErrorKind::UnsupportedAction(_)),
                "{template}"
            );
        }
    }

    /// A context with `n` tags, as a registry with a long history has.
    fn many_tags(n: usize) -> AlertContext {
        AlertContext {
            available_tags: (0..n).map(|i| format!("1.0.{i}")).collect(),
            ..ctx()
        }
    }

    /// Renders on a thread of its own and gives up after `limit`: a bomb on the old code must
    /// fail the test, not hang the test run (the thread is left to finish on its own).
    fn render_within(
        template: &'static str,
        ctx: AlertContext,
        limit: std::time::Duration,
    ) -> Result<String, TemplateError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(render(template, &ctx));
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("rendering {template:?} took more than {limit:?}"))
    }

    #[test]
    fn nested_range_bomb_is_refused_fast() {
        // Three nested ranges over 1,000 tags: 10^9 iterations if nothing stops them.
        let silent = "{{ range .AvailableTags }}{{ range $.AvailableTags }}\
                      {{ range $.AvailableTags }}{{ end }}{{ end }}{{ end }}";
        let err = render_within(silent, many_tags(1000), std::time::Duration::from_secs(5))
            .expect_err("a 10^9-iteration template is refused");
        assert_eq!(err.kind, TemplateErrorKind::TooManyIterations);
        assert_eq!(
            err.to_string(),
            "template error at line 1, column 54: rendering needs more than 100000 range \
             iterations (nested ranges multiply the number of tags): nest fewer ranges"
        );
        // The same bomb writing each tag stops at the size cap, long before memory runs out.
        let loud = "{{ range .AvailableTags }}{{ range $.AvailableTags }}\
                    {{ range $.AvailableTags }}{{ . }}{{ end }}{{ end }}{{ end }}";
        let err = render_within(loud, many_tags(1000), std::time::Duration::from_secs(5))
            .expect_err("a 4 GB text is refused");
        assert_eq!(err.kind, TemplateErrorKind::TooLong);
        assert_eq!(
            err.to_string(),
            "template error at line 1, column 81: the rendered text is longer than 65536 bytes"
        );
    }

    #[test]
    fn nesting_is_limited_when_parsing() {
        let three = "{{ range .AvailableTags }}{{ range $.AvailableTags }}\
                     {{ range $.AvailableTags }}{{ . }}{{ end }}{{ end }}{{ end }}";
        assert_eq!(
            ok(three).len(),
            8 * "v1.1.0".len(),
            "three levels are allowed"
        );
        let four = "{{ range .AvailableTags }}{{ range $.AvailableTags }}\
                    {{ range $.AvailableTags }}\n{{ range $.AvailableTags }}{{ end }}\
                    {{ end }}{{ end }}{{ end }}";
        assert_eq!(
            fail(four).to_string(),
            "template error at line 2, column 1: range nested more than 3 levels deep"
        );
        // Deep nesting is refused before it can recurse, however deep it goes.
        let deep = "{{ range $.AvailableTags }}".repeat(10_000) + &"{{ end }}".repeat(10_000);
        assert_eq!(kind(&deep), TemplateErrorKind::TooDeep);
    }

    #[test]
    fn output_is_limited() {
        // One big text: a join over many tags is checked before it is written.
        let tags = many_tags(20_000);
        for template in ["{{ join .AvailableTags \", \" }}", "{{ .AvailableTags }}"] {
            assert_eq!(
                render(template, &tags).map(|s| s.len()).map_err(|e| e.kind),
                Err(TemplateErrorKind::TooLong),
                "{template}"
            );
        }
        // Text repeated by a range.
        let template = format!(
            "{{{{ range .AvailableTags }}}}{}{{{{ end }}}}",
            "x".repeat(1024)
        );
        assert_eq!(
            render(&template, &many_tags(100))
                .map(|s| s.len())
                .map_err(|e| (e.kind, e.column)),
            Err((TemplateErrorKind::TooLong, 27))
        );
        // Just under the cap is fine.
        let c = AlertContext {
            new_tag: "y".repeat(MAX_OUTPUT - 1),
            ..ctx()
        };
        assert_eq!(
            render("{{ .NewTag }}!", &c).map(|s| s.len()),
            Ok(MAX_OUTPUT)
        );
        assert_eq!(
            render("{{ .NewTag }}!!", &c).map_err(|e| (e.kind, e.column)),
            Err((TemplateErrorKind::TooLong, 14))
        );
    }

    #[test]
    fn unsupported_actions_are_quoted_briefly() {
        let long = format!("{{{{ if {} }}}}", "x".repeat(5000));
        let err = fail(&long).to_string();
        assert!(err.len() < 400, "{} bytes: {err}", err.len());
        assert!(err.contains("unsupported action \"if xxxx"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics(template in "([a-z {}.$\"`\\-/*|]|\\{\\{|\\}\\}|\\.NewTag|range|end|join){0,40}") {
            let result = render(&template, &ctx());
            prop_assert_eq!(result.is_ok(), validate(&template).is_ok());
        }

        #[test]
        fn text_without_braces_is_unchanged(text in "[^{]*") {
            prop_assert_eq!(render(&text, &ctx()).unwrap(), text);
        }

        #[test]
        fn substitutes_any_value(tag in "\\PC*") {
            let c = AlertContext { new_tag: tag.clone(), ..ctx() };
            prop_assert_eq!(render("<{{ .NewTag }}>", &c).unwrap(), format!("<{tag}>"));
        }
    }
}

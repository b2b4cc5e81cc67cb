//! Cron schedule parsing and next-fire-time computation, always in UTC.
//!
//! Accepted forms:
//! - Quartz style (kimup's format), 6 or 7 fields: `sec min hour day-of-month month day-of-week
//!   [year]`, with day-of-week numbered as kimup's documentation says, `0-6` = `SUN-SAT` (and 7 =
//!   Sunday), not go-quartz's `1-7`, which made kimup (Go) fire a day early.
//! - Standard 5-field cron: `min hour day-of-month month day-of-week`, with day-of-week `0-7`
//!   where both `0` and `7` are Sunday. Seconds are fixed at `0`.
//! - Macros: `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`.
//!
//! Every field takes `*`, single values, lists `a,b`, ranges `a-b` and steps `*/n`, `a/n`,
//! `a-b/n`. Months take `JAN-DEC`, day-of-week takes `SUN-SAT` (case-insensitive). `?` means
//! "no restriction" and is only allowed in day-of-month and day-of-week. Day-of-month also
//! takes `L` (last day), `L-n` (n days before the last day), `LW` (last weekday) and `nW`
//! (weekday nearest to day n, never leaving the month). Day-of-week also takes `L` (Saturday,
//! as in Quartz), `xL` (last weekday x of the month) and `x#n` (n-th weekday x of the month,
//! n in 1-5). These special forms must stand alone in their field. The year field takes
//! 1970-2099 like Quartz.
//!
//! Decisions:
//! - Reversed ranges such as `FRI-MON` or `22-2` are rejected rather than wrapped around.
//! - A step larger than the field's span (e.g. `*/61` for minutes) is rejected as a mistake.
//! - Day-of-month and day-of-week: in the 5-field form, when both fields are restricted (do not
//!   start with `*` or `?`) a day matches if *either* matches, as in Vixie cron. In the 6/7-field
//!   form both must match; `?` or `*` lifts a field's restriction. Quartz itself refuses to have
//!   both restricted; go-quartz accepts it, and requiring both is the least surprising reading.
//! - Without a restricted year field, the search for the next fire time stops after 400 years:
//!   the Gregorian calendar repeats every 400 years, so a day that has not come by then never
//!   will (e.g. `0 0 0 30 2 ?` yields `None`).

use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// Years after which an unrestricted search gives up; one full Gregorian cycle.
const SEARCH_YEARS: i32 = 400;

const MONTH_NAMES: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const MACROS: &str = "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly";

/// Why a cron expression was rejected.
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum CronError {
    /// The expression is empty or only whitespace.
    #[error("invalid cron \"\": expression is empty")]
    Empty,
    /// The expression does not have 5, 6 or 7 fields.
    #[error(
        "invalid cron {expr:?}: expected 5 fields (min hour day-of-month month day-of-week), \
         or 6 or 7 Quartz fields (sec min hour day-of-month month day-of-week [year]), got {count}"
    )]
    FieldCount {
        /// The normalized expression.
        expr: String,
        /// How many fields were found.
        count: usize,
    },
    /// An `@` macro that is not supported.
    #[error("invalid cron {expr:?}: unknown macro, expected one of {MACROS}")]
    UnknownMacro {
        /// The normalized expression.
        expr: String,
    },
    /// A value outside the field's allowed range.
    #[error("invalid cron {expr:?}: {field} field: {value} is out of range {min}-{max}")]
    OutOfRange {
        /// The normalized expression.
        expr: String,
        /// The field's name, e.g. `minute`.
        field: &'static str,
        /// The offending value.
        value: u64,
        /// Smallest allowed value.
        min: u32,
        /// Largest allowed value.
        max: u32,
    },
    /// A range whose start is after its end.
    #[error(
        "invalid cron {expr:?}: {field} field: range {start}-{end} is reversed, \
         start must not be greater than end"
    )]
    ReversedRange {
        /// The normalized expression.
        expr: String,
        /// The field's name.
        field: &'static str,
        /// The range's start value.
        start: u32,
        /// The range's end value.
        end: u32,
    },
    /// A step of zero, one that is not a number, or one larger than the field's span.
    #[error("invalid cron {expr:?}: {field} field: invalid step in {token:?}: {reason}")]
    InvalidStep {
        /// The normalized expression.
        expr: String,
        /// The field's name.
        field: &'static str,
        /// The list element holding the step.
        token: String,
        /// What is wrong with the step.
        reason: String,
    },
    /// Anything else that cannot be parsed.
    #[error("invalid cron {expr:?}: {field} field: cannot parse {token:?}: {reason}")]
    Syntax {
        /// The normalized expression.
        expr: String,
        /// The field's name.
        field: &'static str,
        /// The offending text.
        token: String,
        /// What was expected.
        reason: String,
    },
}

/// A field-level problem, turned into a [`CronError`] once the expression and field are known.
#[derive(Debug)]
enum Problem {
    OutOfRange { value: u64, min: u32, max: u32 },
    Reversed { start: u32, end: u32 },
    Step { token: String, reason: String },
    Syntax { token: String, reason: String },
}

impl Problem {
    fn syntax(token: &str, reason: impl Into<String>) -> Self {
        Problem::Syntax {
            token: token.to_string(),
            reason: reason.into(),
        }
    }

    fn into_error(self, expr: &str, field: &'static str) -> CronError {
        let expr = expr.to_string();
        match self {
            Problem::OutOfRange { value, min, max } => CronError::OutOfRange {
                expr,
                field,
                value,
                min,
                max,
            },
            Problem::Reversed { start, end } => CronError::ReversedRange {
                expr,
                field,
                start,
                end,
            },
            Problem::Step { token, reason } => CronError::InvalidStep {
                expr,
                field,
                token,
                reason,
            },
            Problem::Syntax { token, reason } => CronError::Syntax {
                expr,
                field,
                token,
                reason,
            },
        }
    }
}

/// Static description of one field: name, bounds and optional names for values.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Value of `names[0]`; Quartz and standard cron number weekdays differently.
    name_base: u32,
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    name_base: 0,
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    name_base: 0,
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: MONTH_NAMES,
    name_base: 1,
};
const DOW_STANDARD: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: DAY_NAMES,
    name_base: 0,
};
const YEAR: FieldSpec = FieldSpec {
    name: "year",
    min: 1970,
    max: 2099,
    names: &[],
    name_base: 0,
};

/// Set of allowed values within `min..=max`; 192 bits cover the 130 Quartz years.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ValueSet {
    min: u32,
    max: u32,
    words: [u64; 3],
}

impl ValueSet {
    fn empty(min: u32, max: u32) -> Self {
        ValueSet {
            min,
            max,
            words: [0; 3],
        }
    }

    fn insert(&mut self, value: u32) {
        if (self.min..=self.max).contains(&value) {
            let index = (value - self.min) as usize;
            self.words[index / 64] |= 1 << (index % 64);
        }
    }

    fn contains(&self, value: u32) -> bool {
        if !(self.min..=self.max).contains(&value) {
            return false;
        }
        let index = (value - self.min) as usize;
        self.words[index / 64] & (1 << (index % 64)) != 0
    }

    /// Smallest member that is `>= value`.
    fn next_from(&self, value: u32) -> Option<u32> {
        (value.max(self.min)..=self.max).find(|&v| self.contains(v))
    }

    /// Smallest member; sets built by the parser are never empty.
    fn first(&self) -> u32 {
        self.next_from(self.min).unwrap_or(self.min)
    }
}

/// Day-of-month restriction.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DaySpec {
    Any,
    Days(ValueSet),
    /// `L` or `L-offset`.
    Last {
        offset: u32,
    },
    /// `LW`.
    LastWeekday,
    /// `nW`.
    NearestWeekday(u32),
}

/// Day-of-week restriction; weekdays are 0 = Sunday .. 6 = Saturday internally.
#[derive(Clone, Debug, PartialEq, Eq)]
enum WeekdaySpec {
    Any,
    Days(ValueSet),
    /// `xL`: last such weekday of the month.
    Last(u32),
    /// `x#n`: n-th such weekday of the month.
    Nth {
        weekday: u32,
        nth: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Standard,
    Quartz,
}

/// A parsed cron schedule; see the module docs for the accepted syntax.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    source: String,
    seconds: ValueSet,
    minutes: ValueSet,
    hours: ValueSet,
    days: DaySpec,
    months: ValueSet,
    weekdays: WeekdaySpec,
    years: Option<ValueSet>,
    /// Vixie cron: a day matches when either day field matches.
    either_day: bool,
}

impl FromStr for Schedule {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expr = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if expr.is_empty() {
            return Err(CronError::Empty);
        }
        if expr.starts_with('@') {
            let expansion = match expr.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => return Err(CronError::UnknownMacro { expr }),
            };
            let fields: Vec<&str> = expansion.split(' ').collect();
            return parse_fields(&expr, &fields, Dialect::Standard);
        }
        let fields: Vec<&str> = expr.split(' ').collect();
        match fields.len() {
            5 => parse_fields(&expr, &fields, Dialect::Standard),
            6 | 7 => parse_fields(&expr, &fields, Dialect::Quartz),
            count => Err(CronError::FieldCount {
                expr: expr.clone(),
                count,
            }),
        }
    }
}

impl Schedule {
    /// Next fire time strictly after `after`, or `None` if the schedule never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // `timestamp()` floors, so sub-second parts of `after` are dropped before stepping on.
        let start = DateTime::<Utc>::from_timestamp(after.timestamp().checked_add(1)?, 0)?;
        let (mut year, mut month, mut day) = (start.year(), start.month(), start.day());
        let mut time = (start.hour(), start.minute(), start.second());
        // A year set ends the search by itself once its last year has passed.
        let limit = match self.years {
            Some(_) => i32::MAX,
            None => year.saturating_add(SEARCH_YEARS),
        };
        loop {
            if year > limit {
                return None;
            }
            if let Some(years) = &self.years {
                let allowed = u32::try_from(year).is_ok_and(|y| years.contains(y));
                if !allowed {
                    let from = u32::try_from(year.saturating_add(1)).unwrap_or(0);
                    year = i32::try_from(years.next_from(from)?).ok()?;
                    (month, day, time) = (1, 1, (0, 0, 0));
                    continue;
                }
            }
            if !self.months.contains(month) {
                match self.months.next_from(month + 1) {
                    Some(next) => month = next,
                    None => {
                        year += 1;
                        month = self.months.first();
                    }
                }
                (day, time) = (1, (0, 0, 0));
                continue;
            }
            let last = days_in_month(year, month);
            if day > last {
                if month == 12 {
                    (year, month) = (year + 1, 1);
                } else {
                    month += 1;
                }
                (day, time) = (1, (0, 0, 0));
                continue;
            }
            if self.day_matches(year, month, day, last)
                && let Some((h, m, s)) = self.next_time(time)
            {
                return NaiveDate::from_ymd_opt(year, month, day)?
                    .and_hms_opt(h, m, s)
                    .map(|naive| naive.and_utc());
            }
            day += 1;
            time = (0, 0, 0);
        }
    }

    /// The expression this schedule was parsed from, trimmed and with single spaces.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the schedule fires exactly at `at` (sub-second parts ignored).
    #[cfg(test)]
    fn matches(&self, at: DateTime<Utc>) -> bool {
        self.matches_date(at.date_naive())
            && self.hours.contains(at.hour())
            && self.minutes.contains(at.minute())
            && self.seconds.contains(at.second())
    }

    /// Whether the schedule fires at some time on `date`.
    #[cfg(test)]
    fn matches_date(&self, date: NaiveDate) -> bool {
        let (year, month) = (date.year(), date.month());
        let year_ok = match &self.years {
            Some(years) => u32::try_from(year).is_ok_and(|y| years.contains(y)),
            None => true,
        };
        year_ok
            && self.months.contains(month)
            && self.day_matches(year, month, date.day(), days_in_month(year, month))
    }

    /// Earliest allowed time of day at or after `(h, m, s)`.
    fn next_time(&self, (h, m, s): (u32, u32, u32)) -> Option<(u32, u32, u32)> {
        let first_minute = self.minutes.first();
        let first_second = self.seconds.first();
        let hour = self.hours.next_from(h)?;
        if hour != h {
            return Some((hour, first_minute, first_second));
        }
        if let Some(minute) = self.minutes.next_from(m) {
            if minute != m {
                return Some((h, minute, first_second));
            }
            if let Some(second) = self.seconds.next_from(s) {
                return Some((h, m, second));
            }
            if let Some(minute) = self.minutes.next_from(m + 1) {
                return Some((h, minute, first_second));
            }
        }
        let hour = self.hours.next_from(h + 1)?;
        Some((hour, first_minute, first_second))
    }

    fn day_matches(&self, year: i32, month: u32, day: u32, last: u32) -> bool {
        let today = weekday(year, month, day);
        let dom = match &self.days {
            DaySpec::Any => true,
            DaySpec::Days(set) => set.contains(day),
            DaySpec::Last { offset } => last.checked_sub(*offset) == Some(day),
            DaySpec::LastWeekday => {
                let target = match weekday(year, month, last) {
                    6 => last - 1,
                    0 => last - 2,
                    _ => last,
                };
                day == target
            }
            DaySpec::NearestWeekday(target) => {
                nearest_weekday(year, month, *target, last) == Some(day)
            }
        };
        let dow = match &self.weekdays {
            WeekdaySpec::Any => true,
            WeekdaySpec::Days(set) => set.contains(today),
            WeekdaySpec::Last(wanted) => today == *wanted && day + 7 > last,
            WeekdaySpec::Nth {
                weekday: wanted,
                nth,
            } => today == *wanted && (day - 1) / 7 + 1 == *nth,
        };
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }
}

/// Quartz `nW`: the weekday closest to day `target`, without leaving the month.
fn nearest_weekday(year: i32, month: u32, target: u32, last: u32) -> Option<u32> {
    if target > last {
        return None;
    }
    Some(match weekday(year, month, target) {
        6 if target == 1 => 3,
        6 => target - 1,
        0 if target == last => target - 2,
        0 => target + 1,
        _ => target,
    })
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Day of week, 0 = Sunday, for the proleptic Gregorian calendar (Sakamoto's method).
fn weekday(year: i32, month: u32, day: u32) -> u32 {
    const OFFSETS: [i64; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = i64::from(if month < 3 { year - 1 } else { year });
    let offset = OFFSETS[(month.clamp(1, 12) - 1) as usize];
    let days =
        y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400) + offset + i64::from(day);
    // rem_euclid(7) is always in 0..7, so the cast cannot truncate.
    days.rem_euclid(7) as u32
}

fn parse_fields(expr: &str, fields: &[&str], dialect: Dialect) -> Result<Schedule, CronError> {
    let (second, rest) = match dialect {
        Dialect::Standard => ("0", fields),
        Dialect::Quartz => match fields.split_first() {
            Some((first, rest)) => (*first, rest),
            None => {
                return Err(CronError::FieldCount {
                    expr: expr.to_string(),
                    count: 0,
                });
            }
        },
    };
    let [minute, hour, dom, month, dow, year @ ..] = rest else {
        return Err(CronError::FieldCount {
            expr: expr.to_string(),
            count: fields.len(),
        });
    };
    let plain = |spec: &FieldSpec, text: &str| {
        parse_plain(text, spec).map_err(|p| p.into_error(expr, spec.name))
    };
    let dow_spec = match dialect {
        Dialect::Standard => &DOW_STANDARD,
        // kimup's documentation numbers the 6-field day-of-week 0-6 from Sunday ("`00 00 00 * * 1`
        // triggers every Monday"); go-quartz read 1 as Sunday, firing a day early. The documented
        // meaning wins, so both dialects share standard numbering (0 and 7 = Sunday).
        Dialect::Quartz => &DOW_STANDARD,
    };
    let days = parse_days(dom).map_err(|p| p.into_error(expr, DAY_OF_MONTH.name))?;
    let weekdays = parse_weekdays(dow, dow_spec).map_err(|p| p.into_error(expr, dow_spec.name))?;
    let years = match year {
        [] => None,
        [text] if *text == "*" => None,
        [text] => Some(plain(&YEAR, text)?),
        _ => {
            return Err(CronError::FieldCount {
                expr: expr.to_string(),
                count: fields.len(),
            });
        }
    };
    let restricted = |text: &str| !text.starts_with('*') && text != "?";
    Ok(Schedule {
        source: expr.to_string(),
        seconds: plain(&SECOND, second)?,
        minutes: plain(&MINUTE, minute)?,
        hours: plain(&HOUR, hour)?,
        days,
        months: plain(&MONTH, month)?,
        weekdays,
        years,
        either_day: dialect == Dialect::Standard && restricted(dom) && restricted(dow),
    })
}

fn parse_days(text: &str) -> Result<DaySpec, Problem> {
    let upper = text.to_ascii_uppercase();
    if upper == "*" || upper == "?" {
        return Ok(DaySpec::Any);
    }
    if upper == "L" {
        return Ok(DaySpec::Last { offset: 0 });
    }
    if upper == "LW" {
        return Ok(DaySpec::LastWeekday);
    }
    if let Some(offset) = upper.strip_prefix("L-") {
        let offset = parse_number(offset, text)?;
        return match u32::try_from(offset) {
            Ok(offset) if offset <= 30 => Ok(DaySpec::Last { offset }),
            _ => Err(Problem::OutOfRange {
                value: offset,
                min: 0,
                max: 30,
            }),
        };
    }
    if let Some(day) = upper.strip_suffix('W')
        && !day.is_empty()
        && day.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(DaySpec::NearestWeekday(parse_value(day, &DAY_OF_MONTH)?));
    }
    if upper.contains(['L', 'W']) {
        return Err(Problem::syntax(
            text,
            "L and W must stand alone, as in \"L\", \"L-3\", \"LW\" or \"15W\"",
        ));
    }
    parse_plain(text, &DAY_OF_MONTH).map(DaySpec::Days)
}

fn parse_weekdays(text: &str, spec: &FieldSpec) -> Result<WeekdaySpec, Problem> {
    let upper = text.to_ascii_uppercase();
    if upper == "*" || upper == "?" {
        return Ok(WeekdaySpec::Any);
    }
    // 0 and 7 are both Sunday.
    let to_weekday = |value: u32| value % 7;
    if upper == "L" {
        // Quartz reads a lone `L` in day-of-week as Saturday.
        return Ok(WeekdaySpec::Days(single_weekday(6)));
    }
    if let Some((day, nth)) = upper.split_once('#') {
        let weekday = to_weekday(parse_value(day, spec)?);
        let nth_value = parse_number(nth, text)?;
        return match u32::try_from(nth_value) {
            Ok(nth) if (1..=5).contains(&nth) => Ok(WeekdaySpec::Nth { weekday, nth }),
            _ => Err(Problem::syntax(
                text,
                format!("occurrence {nth_value} after '#' must be 1-5"),
            )),
        };
    }
    if let Some(day) = upper.strip_suffix('L')
        && !day.is_empty()
        && !day.contains([',', '-', '/', '*'])
    {
        return Ok(WeekdaySpec::Last(to_weekday(parse_value(day, spec)?)));
    }
    if upper.contains(['#', 'L']) {
        return Err(Problem::syntax(
            text,
            "L and # must stand alone, as in \"6L\" or \"2#1\"",
        ));
    }
    let raw = parse_plain(text, spec)?;
    let mut set = ValueSet::empty(0, 6);
    for value in spec.min..=spec.max {
        if raw.contains(value) {
            set.insert(to_weekday(value));
        }
    }
    Ok(WeekdaySpec::Days(set))
}

fn single_weekday(weekday: u32) -> ValueSet {
    let mut set = ValueSet::empty(0, 6);
    set.insert(weekday);
    set
}

/// Parses a comma-separated list of values, ranges and steps.
fn parse_plain(text: &str, spec: &FieldSpec) -> Result<ValueSet, Problem> {
    let mut set = ValueSet::empty(spec.min, spec.max);
    for item in text.split(',') {
        if item.is_empty() {
            return Err(Problem::syntax(text, "empty list element"));
        }
        if item == "?" {
            let reason = if spec.name == DAY_OF_MONTH.name || spec.name == DOW_STANDARD.name {
                "? must stand alone"
            } else {
                "? is only allowed in the day-of-month and day-of-week fields"
            };
            return Err(Problem::syntax(item, reason));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(step, item, spec)?)),
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((start, end)) = range.split_once('-') {
            let (start, end) = (parse_value(start, spec)?, parse_value(end, spec)?);
            if start > end {
                return Err(Problem::Reversed { start, end });
            }
            (start, end)
        } else {
            let start = parse_value(range, spec)?;
            // Quartz `a/n` runs from `a` to the end of the field.
            (start, if step.is_some() { spec.max } else { start })
        };
        let step = step.unwrap_or(1) as usize;
        for value in (start..=end).step_by(step) {
            set.insert(value);
        }
    }
    Ok(set)
}

fn parse_step(step: &str, item: &str, spec: &FieldSpec) -> Result<u32, Problem> {
    let problem = |reason: String| Problem::Step {
        token: item.to_string(),
        reason,
    };
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(problem(format!("{step:?} is not a number")));
    }
    let span = spec.max - spec.min + 1;
    match step.parse::<u64>() {
        Ok(0) => Err(problem("step must be at least 1".to_string())),
        Ok(n) if n <= u64::from(span) => u32::try_from(n).map_err(|_| problem(String::new())),
        _ => Err(problem(format!(
            "step {step} is larger than the field's span of {span} values ({}-{})",
            spec.min, spec.max
        ))),
    }
}

/// Parses one number or name and checks it against the field's range.
fn parse_value(text: &str, spec: &FieldSpec) -> Result<u32, Problem> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let value = parse_number(text, text)?;
        return match u32::try_from(value) {
            Ok(v) if (spec.min..=spec.max).contains(&v) => Ok(v),
            _ => Err(Problem::OutOfRange {
                value,
                min: spec.min,
                max: spec.max,
            }),
        };
    }
    if let Some(index) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        // Name tables are at most 12 long, so the index always fits.
        return Ok(spec.name_base + index as u32);
    }
    let reason = match (text.is_empty(), spec.names.first(), spec.names.last()) {
        (true, _, _) => "missing value".to_string(),
        (false, Some(first), Some(last)) => format!(
            "expected a number {}-{} or a name {first}-{last}",
            spec.min, spec.max
        ),
        _ => format!("expected a number {}-{}", spec.min, spec.max),
    };
    Err(Problem::syntax(text, reason))
}

fn parse_number(digits: &str, token: &str) -> Result<u64, Problem> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::syntax(
            token,
            format!("{digits:?} is not a number"),
        ));
    }
    digits
        .parse::<u64>()
        .map_err(|_| Problem::syntax(token, "number is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn parse(expr: &str) -> Schedule {
        expr.parse().unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn next(expr: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        parse(expr).next_after(after)
    }

    /// The first `n` fire times after `after`.
    fn fires(expr: &str, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let schedule = parse(expr);
        let mut out = Vec::new();
        let mut t = after;
        for _ in 0..n {
            t = schedule.next_after(t).unwrap();
            out.push(t);
        }
        out
    }

    fn err(expr: &str) -> String {
        expr.parse::<Schedule>().unwrap_err().to_string()
    }

    // 2024-01-01 is a Monday.
    const MON: (i32, u32, u32) = (2024, 1, 1);

    fn monday_start() -> DateTime<Utc> {
        at(MON.0, MON.1, MON.2, 0, 0, 0)
    }

    #[test]
    fn kimup_doc_every_minute() {
        let t = at(2024, 5, 5, 10, 20, 30);
        assert_eq!(
            fires("0 */1 * * * *", t, 3),
            vec![
                at(2024, 5, 5, 10, 21, 0),
                at(2024, 5, 5, 10, 22, 0),
                at(2024, 5, 5, 10, 23, 0)
            ]
        );
    }

    #[test]
    fn kimup_doc_every_two_hours() {
        let t = at(2024, 5, 5, 10, 20, 30);
        assert_eq!(
            fires("0 0 */2 * * ?", t, 3),
            vec![
                at(2024, 5, 5, 12, 0, 0),
                at(2024, 5, 5, 14, 0, 0),
                at(2024, 5, 5, 16, 0, 0)
            ]
        );
        assert_eq!(
            next("0 0 */2 * * ?", at(2024, 5, 5, 23, 0, 0)),
            Some(at(2024, 5, 6, 0, 0, 0))
        );
    }

    #[test]
    fn strictly_after_even_when_matching() {
        let t = at(2024, 5, 5, 10, 0, 0);
        assert_eq!(next("0 * * * * *", t), Some(at(2024, 5, 5, 10, 1, 0)));
        let with_nanos = t + chrono::Duration::milliseconds(500);
        assert_eq!(
            next("* * * * * *", with_nanos),
            Some(at(2024, 5, 5, 10, 0, 1))
        );
        assert_eq!(next("* * * * * *", t), Some(at(2024, 5, 5, 10, 0, 1)));
    }

    #[test]
    fn seconds_field_lists_ranges_steps() {
        let t = at(2024, 1, 1, 0, 0, 0);
        let secs =
            |expr: &str, n| -> Vec<u32> { fires(expr, t, n).iter().map(|d| d.second()).collect() };
        assert_eq!(secs("5,10,50 * * * * ?", 4), vec![5, 10, 50, 5]);
        assert_eq!(secs("10-12 * * * * ?", 4), vec![10, 11, 12, 10]);
        assert_eq!(secs("*/20 * * * * ?", 4), vec![20, 40, 0, 20]);
        assert_eq!(secs("45/5 * * * * ?", 4), vec![45, 50, 55, 45]);
        assert_eq!(secs("10-30/10 * * * * ?", 4), vec![10, 20, 30, 10]);
        assert_eq!(secs("1-3,50-51 * * * * ?", 6), vec![1, 2, 3, 50, 51, 1]);
    }

    #[test]
    fn minute_and_hour_fields() {
        let t = at(2024, 1, 1, 0, 0, 0);
        assert_eq!(
            fires("0 15,45 9-10 * * ?", t, 5),
            vec![
                at(2024, 1, 1, 9, 15, 0),
                at(2024, 1, 1, 9, 45, 0),
                at(2024, 1, 1, 10, 15, 0),
                at(2024, 1, 1, 10, 45, 0),
                at(2024, 1, 2, 9, 15, 0)
            ]
        );
        assert_eq!(
            next("30 59 23 * * ?", at(2024, 12, 31, 23, 59, 30)),
            Some(at(2025, 1, 1, 23, 59, 30))
        );
    }

    #[test]
    fn month_field_numbers_and_names() {
        let t = at(2024, 1, 15, 0, 0, 0);
        assert_eq!(
            fires("0 0 0 1 MAR,sep ?", t, 3),
            vec![
                at(2024, 3, 1, 0, 0, 0),
                at(2024, 9, 1, 0, 0, 0),
                at(2025, 3, 1, 0, 0, 0)
            ]
        );
        assert_eq!(
            fires("0 0 0 1 jun-AUG ?", t, 4),
            vec![
                at(2024, 6, 1, 0, 0, 0),
                at(2024, 7, 1, 0, 0, 0),
                at(2024, 8, 1, 0, 0, 0),
                at(2025, 6, 1, 0, 0, 0)
            ]
        );
        assert_eq!(
            fires("0 0 0 1 */4 ?", t, 3),
            vec![
                at(2024, 5, 1, 0, 0, 0),
                at(2024, 9, 1, 0, 0, 0),
                at(2025, 1, 1, 0, 0, 0)
            ]
        );
    }

    #[test]
    fn day_of_month_field() {
        let t = at(2024, 4, 20, 0, 0, 0);
        assert_eq!(
            fires("0 0 0 31 * ?", t, 3),
            vec![
                at(2024, 5, 31, 0, 0, 0),
                at(2024, 7, 31, 0, 0, 0),
                at(2024, 8, 31, 0, 0, 0)
            ]
        );
        assert_eq!(
            fires("0 0 0 1,15 * ?", t, 3),
            vec![
                at(2024, 5, 1, 0, 0, 0),
                at(2024, 5, 15, 0, 0, 0),
                at(2024, 6, 1, 0, 0, 0)
            ]
        );
    }

    #[test]
    fn six_field_weekdays_follow_kimups_documentation() {
        // kimup's docs: "`00 00 00 * * 1` will trigger the image every Monday at midnight", with
        // day-of-week 0-6 from Sunday. go-quartz read 1 as Sunday; the documented meaning wins.
        let t = at(2023, 12, 28, 0, 0, 0);
        let monday = Some(at(2024, 1, 1, 0, 0, 0));
        assert_eq!(next("00 00 00 * * 1", t), monday);
        assert_eq!(next("0 0 12 ? * 1", t), Some(at(2024, 1, 1, 12, 0, 0)));
        assert_eq!(next("0 12 * * 1", t), Some(at(2024, 1, 1, 12, 0, 0)));
        assert_eq!(next("0 0 12 ? * MON", t), Some(at(2024, 1, 1, 12, 0, 0)));
        assert_eq!(next("0 12 * * mon", t), Some(at(2024, 1, 1, 12, 0, 0)));
        // Sunday: 0 and 7, in both forms.
        let sunday = Some(at(2023, 12, 31, 0, 0, 0));
        assert_eq!(next("0 0 0 ? * 0", t), sunday);
        assert_eq!(next("0 0 0 ? * 7", t), sunday);
        assert_eq!(next("0 0 * * 0", t), sunday);
        assert_eq!(next("0 0 * * 7", t), sunday);
        assert_eq!(next("0 0 0 ? * SUN", t), sunday);
        // Saturday: 6.
        let saturday = Some(at(2023, 12, 30, 0, 0, 0));
        assert_eq!(next("0 0 0 ? * 6", t), saturday);
        assert_eq!(next("0 0 * * 6", t), saturday);
    }

    #[test]
    fn weekday_ranges_and_steps() {
        let days = |expr: &str| -> Vec<u32> {
            fires(expr, monday_start() - chrono::Duration::seconds(1), 6)
                .iter()
                .map(|d| d.day())
                .collect()
        };
        assert_eq!(days("0 0 0 ? * MON-FRI"), vec![1, 2, 3, 4, 5, 8]);
        assert_eq!(days("0 0 0 ? * 1-5"), vec![1, 2, 3, 4, 5, 8]);
        assert_eq!(days("0 0 * * 1-5"), vec![1, 2, 3, 4, 5, 8]);
        assert_eq!(days("0 0 * * 5-7"), vec![5, 6, 7, 12, 13, 14]);
        assert_eq!(days("0 0 * * */2"), vec![2, 4, 6, 7, 9, 11]);
    }

    #[test]
    fn leap_year_feb_29() {
        let t = at(2021, 3, 1, 0, 0, 0);
        assert_eq!(
            fires("0 0 0 29 2 ?", t, 3),
            vec![
                at(2024, 2, 29, 0, 0, 0),
                at(2028, 2, 29, 0, 0, 0),
                at(2032, 2, 29, 0, 0, 0)
            ]
        );
        // 2100 is not a leap year.
        assert_eq!(
            next("0 0 29 2 *", at(2096, 3, 1, 0, 0, 0)),
            Some(at(2104, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn impossible_dates_never_fire() {
        let t = at(2024, 1, 1, 0, 0, 0);
        assert_eq!(next("0 0 0 30 2 ?", t), None);
        assert_eq!(next("0 0 31 4,6,9,11 *", t), None);
        assert_eq!(next("0 0 0 31 4 ? 2030-2040", t), None);
        assert_eq!(next("0 0 0 ? 2 2#5 2023", t), None);
    }

    #[test]
    fn rare_but_possible_dates_are_found() {
        // Feb 29 on a Monday: 2044 after 2024.
        assert_eq!(
            next("0 0 0 29 2 MON", at(2024, 3, 1, 0, 0, 0)),
            Some(at(2044, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn last_day_of_month() {
        let t = at(2023, 12, 15, 0, 0, 0);
        assert_eq!(
            fires("0 0 0 L * ?", t, 4),
            vec![
                at(2023, 12, 31, 0, 0, 0),
                at(2024, 1, 31, 0, 0, 0),
                at(2024, 2, 29, 0, 0, 0),
                at(2024, 3, 31, 0, 0, 0)
            ]
        );
        assert_eq!(
            next("0 0 0 L-2 2 ?", at(2023, 1, 1, 0, 0, 0)),
            Some(at(2023, 2, 26, 0, 0, 0))
        );
        assert_eq!(next("0 0 L * *", t), Some(at(2023, 12, 31, 0, 0, 0)));
    }

    #[test]
    fn weekday_nearest_and_last() {
        // 2024-06-01 is a Saturday, 2024-06-30 a Sunday, 2024-09-15 a Sunday.
        assert_eq!(
            next("0 0 0 1W * ?", at(2024, 5, 31, 0, 0, 0)),
            Some(at(2024, 6, 3, 0, 0, 0))
        );
        assert_eq!(
            next("0 0 0 15W * ?", at(2024, 9, 1, 0, 0, 0)),
            Some(at(2024, 9, 16, 0, 0, 0))
        );
        assert_eq!(
            next("0 0 0 LW * ?", at(2024, 6, 1, 0, 0, 0)),
            Some(at(2024, 6, 28, 0, 0, 0))
        );
        assert_eq!(
            next("0 0 0 30W * ?", at(2024, 6, 1, 0, 0, 0)),
            Some(at(2024, 6, 28, 0, 0, 0))
        );
    }

    #[test]
    fn nth_weekday_with_hash() {
        // First Monday: 1#1 in both forms.
        let t = at(2024, 1, 2, 0, 0, 0);
        assert_eq!(
            fires("0 0 9 ? * 1#1", t, 3),
            vec![
                at(2024, 2, 5, 9, 0, 0),
                at(2024, 3, 4, 9, 0, 0),
                at(2024, 4, 1, 9, 0, 0)
            ]
        );
        assert_eq!(next("0 9 * * 1#1", t), Some(at(2024, 2, 5, 9, 0, 0)));
        assert_eq!(next("0 0 9 ? * MON#1", t), Some(at(2024, 2, 5, 9, 0, 0)));
        // Fifth Friday only exists in some months: March 2024 has 29th.
        assert_eq!(
            next("0 0 0 ? * 5#5", at(2024, 2, 1, 0, 0, 0)),
            Some(at(2024, 3, 29, 0, 0, 0))
        );
    }

    #[test]
    fn last_weekday_of_month() {
        // Last Friday: 2024-01-26, 2024-02-23.
        let t = at(2024, 1, 1, 0, 0, 0);
        assert_eq!(
            fires("0 0 0 ? * 5L", t, 2),
            vec![at(2024, 1, 26, 0, 0, 0), at(2024, 2, 23, 0, 0, 0)]
        );
        assert_eq!(next("0 0 * * 5L", t), Some(at(2024, 1, 26, 0, 0, 0)));
        assert_eq!(next("0 0 0 ? * FRIL", t), Some(at(2024, 1, 26, 0, 0, 0)));
        // A lone L in day-of-week is Saturday, as in Quartz.
        assert_eq!(next("0 0 0 ? * L", t), Some(at(2024, 1, 6, 0, 0, 0)));
    }

    #[test]
    fn day_fields_quartz_requires_both() {
        // The 13th that is a Friday: 2024-09-13.
        assert_eq!(
            next("0 0 0 13 * FRI", at(2024, 1, 1, 0, 0, 0)),
            Some(at(2024, 9, 13, 0, 0, 0))
        );
    }

    #[test]
    fn day_fields_standard_matches_either() {
        // The 13th or any Friday: 2024-01-05 (Friday) comes before the 13th.
        let t = at(2024, 1, 1, 0, 0, 0);
        assert_eq!(
            fires("0 0 13 * 5", t, 3),
            vec![
                at(2024, 1, 5, 0, 0, 0),
                at(2024, 1, 12, 0, 0, 0),
                at(2024, 1, 13, 0, 0, 0)
            ]
        );
        // A `*`-prefixed field counts as unrestricted, as in Vixie cron, so both must match.
        assert_eq!(next("0 0 */2 * 5", t), Some(at(2024, 1, 5, 0, 0, 0)));
        assert_eq!(next("0 0 */2 * 1", t), Some(at(2024, 1, 15, 0, 0, 0)));
    }

    #[test]
    fn macros() {
        let t = at(2024, 5, 5, 10, 20, 30);
        assert_eq!(next("@hourly", t), Some(at(2024, 5, 5, 11, 0, 0)));
        assert_eq!(next("@daily", t), Some(at(2024, 5, 6, 0, 0, 0)));
        assert_eq!(next("@midnight", t), Some(at(2024, 5, 6, 0, 0, 0)));
        // 2024-05-05 is a Sunday.
        assert_eq!(next("@weekly", t), Some(at(2024, 5, 12, 0, 0, 0)));
        assert_eq!(next("@monthly", t), Some(at(2024, 6, 1, 0, 0, 0)));
        assert_eq!(next("@yearly", t), Some(at(2025, 1, 1, 0, 0, 0)));
        assert_eq!(next("@annually", t), Some(at(2025, 1, 1, 0, 0, 0)));
        assert_eq!(next("  @HOURLY ", t), Some(at(2024, 5, 5, 11, 0, 0)));
        assert_eq!(parse(" @hourly ").source(), "@hourly");
    }

    #[test]
    fn year_field() {
        let t = at(2024, 5, 5, 0, 0, 0);
        assert_eq!(
            fires("0 0 0 1 1 ? 2026,2030", t, 2),
            vec![at(2026, 1, 1, 0, 0, 0), at(2030, 1, 1, 0, 0, 0)]
        );
        assert_eq!(
            parse("0 0 0 1 1 ? 2026,2030").next_after(at(2030, 1, 1, 0, 0, 0)),
            None
        );
        assert_eq!(next("0 0 0 1 1 ? 2020-2023", t), None);
        assert_eq!(next("0 0 0 1 1 ? 2025/5", t), Some(at(2025, 1, 1, 0, 0, 0)));
        assert_eq!(
            fires("0 0 0 1 1 ? 2025/5", t, 2)[1],
            at(2030, 1, 1, 0, 0, 0)
        );
        assert_eq!(next("0 0 0 1 1 ? *", t), Some(at(2025, 1, 1, 0, 0, 0)));
        // Before the Quartz year range, the search jumps forward to it, however far.
        assert_eq!(
            next("0 0 0 1 1 ? 2000", at(1900, 1, 1, 0, 0, 0)),
            Some(at(2000, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            next("0 0 0 1 1 ? 2099", at(1000, 1, 1, 0, 0, 0)),
            Some(at(2099, 1, 1, 0, 0, 0))
        );
    }

    #[test]
    fn whitespace_is_normalized() {
        let schedule = parse("  0   */5\t* * *  ?  ");
        assert_eq!(schedule.source(), "0 */5 * * * ?");
        assert_eq!(schedule, parse("0 */5 * * * ?"));
    }

    #[test]
    fn end_of_time_is_none() {
        let max = DateTime::<Utc>::MAX_UTC;
        assert_eq!(next("* * * * * *", max), None);
    }

    #[test]
    fn weekday_matches_chrono() {
        for (y, m, d) in [
            (2024, 1, 1),
            (2000, 2, 29),
            (1900, 3, 1),
            (1, 1, 1),
            (-44, 3, 15),
        ] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            assert_eq!(weekday(y, m, d), date.weekday().num_days_from_sunday());
        }
    }

    #[test]
    fn error_empty() {
        assert_eq!(err(""), "invalid cron \"\": expression is empty");
        assert_eq!(err("   \t "), "invalid cron \"\": expression is empty");
        assert_eq!("".parse::<Schedule>(), Err(CronError::Empty));
    }

    #[test]
    fn error_field_count() {
        assert_eq!(
            err("* * * *"),
            "invalid cron \"* * * *\": expected 5 fields (min hour day-of-month month \
             day-of-week), or 6 or 7 Quartz fields (sec min hour day-of-month month \
             day-of-week [year]), got 4"
        );
        assert_eq!(
            "0 0 0 1 1 ? 2024 x".parse::<Schedule>(),
            Err(CronError::FieldCount {
                expr: "0 0 0 1 1 ? 2024 x".to_string(),
                count: 8
            })
        );
        assert!(err("garbage").contains("got 1"));
    }

    #[test]
    fn error_unknown_macro() {
        assert_eq!(
            err("@every 5m"),
            "invalid cron \"@every 5m\": unknown macro, expected one of @yearly, @annually, \
             @monthly, @weekly, @daily, @midnight, @hourly"
        );
        assert!(err("@reboot").contains("unknown macro"));
    }

    #[test]
    fn error_out_of_range() {
        assert_eq!(
            err("0 61 * * * *"),
            "invalid cron \"0 61 * * * *\": minute field: 61 is out of range 0-59"
        );
        assert_eq!(
            err("60 * * * * ?"),
            "invalid cron \"60 * * * * ?\": second field: 60 is out of range 0-59"
        );
        assert_eq!(
            err("0 0 24 * * ?"),
            "invalid cron \"0 0 24 * * ?\": hour field: 24 is out of range 0-23"
        );
        assert_eq!(
            err("0 0 0 0 * ?"),
            "invalid cron \"0 0 0 0 * ?\": day-of-month field: 0 is out of range 1-31"
        );
        assert_eq!(
            err("0 0 0 32 * ?"),
            "invalid cron \"0 0 0 32 * ?\": day-of-month field: 32 is out of range 1-31"
        );
        assert_eq!(
            err("0 0 0 1 13 ?"),
            "invalid cron \"0 0 0 1 13 ?\": month field: 13 is out of range 1-12"
        );
        assert_eq!(
            err("0 0 0 ? * 9"),
            "invalid cron \"0 0 0 ? * 9\": day-of-week field: 9 is out of range 0-7"
        );
        assert_eq!(
            err("0 0 0 ? * 8"),
            "invalid cron \"0 0 0 ? * 8\": day-of-week field: 8 is out of range 0-7"
        );
        assert_eq!(
            err("0 0 * * 8"),
            "invalid cron \"0 0 * * 8\": day-of-week field: 8 is out of range 0-7"
        );
        assert_eq!(
            err("0 0 0 1 1 ? 2100"),
            "invalid cron \"0 0 0 1 1 ? 2100\": year field: 2100 is out of range 1970-2099"
        );
        assert_eq!(
            err("0 0 0 L-31 * ?"),
            "invalid cron \"0 0 0 L-31 * ?\": day-of-month field: 31 is out of range 0-30"
        );
        assert_eq!(
            err("0 0 0 32W * ?"),
            "invalid cron \"0 0 0 32W * ?\": day-of-month field: 32 is out of range 1-31"
        );
        assert_eq!(
            err("0 0 0 ? * 9#1"),
            "invalid cron \"0 0 0 ? * 9#1\": day-of-week field: 9 is out of range 0-7"
        );
        assert_eq!(
            err("0 5-70 * * * ?"),
            "invalid cron \"0 5-70 * * * ?\": minute field: 70 is out of range 0-59"
        );
        assert!(err("99999999999999999999 * * * * ?").contains("number is too large"));
    }

    #[test]
    fn error_bad_step() {
        assert_eq!(
            err("0 */0 * * * *"),
            "invalid cron \"0 */0 * * * *\": minute field: invalid step in \"*/0\": \
             step must be at least 1"
        );
        assert_eq!(
            err("*/61 * * * * ?"),
            "invalid cron \"*/61 * * * * ?\": second field: invalid step in \"*/61\": \
             step 61 is larger than the field's span of 60 values (0-59)"
        );
        assert_eq!(
            err("0 */x * * * *"),
            "invalid cron \"0 */x * * * *\": minute field: invalid step in \"*/x\": \
             \"x\" is not a number"
        );
        assert!(err("0 5/ * * * *").contains("invalid step in \"5/\""));
        assert!(err("0 1/2/3 * * * *").contains("invalid step"));
    }

    #[test]
    fn error_reversed_range() {
        assert_eq!(
            err("0 0 22-2 * * ?"),
            "invalid cron \"0 0 22-2 * * ?\": hour field: range 22-2 is reversed, \
             start must not be greater than end"
        );
        assert_eq!(
            err("0 0 * * FRI-MON"),
            "invalid cron \"0 0 * * FRI-MON\": day-of-week field: range 5-1 is reversed, \
             start must not be greater than end"
        );
    }

    #[test]
    fn error_garbage_values() {
        assert_eq!(
            err("0 x * * * ?"),
            "invalid cron \"0 x * * * ?\": minute field: cannot parse \"x\": \
             expected a number 0-59"
        );
        assert_eq!(
            err("0 0 0 1 FOO ?"),
            "invalid cron \"0 0 0 1 FOO ?\": month field: cannot parse \"FOO\": \
             expected a number 1-12 or a name JAN-DEC"
        );
        assert_eq!(
            err("0 0 * * MONDAY"),
            "invalid cron \"0 0 * * MONDAY\": day-of-week field: cannot parse \"MONDAY\": \
             expected a number 0-7 or a name SUN-SAT"
        );
        assert_eq!(
            err("0 1,,2 * * * ?"),
            "invalid cron \"0 1,,2 * * * ?\": minute field: cannot parse \"1,,2\": \
             empty list element"
        );
        assert_eq!(
            err("0 -5 * * * ?"),
            "invalid cron \"0 -5 * * * ?\": minute field: cannot parse \"\": missing value"
        );
        assert!(err("0 1-2-3 * * * ?").contains("minute field: cannot parse \"2-3\""));
        assert!(err("0 0 0 1 JAN ? abc").contains("year field: cannot parse \"abc\""));
    }

    #[test]
    fn error_question_mark_misuse() {
        assert_eq!(
            err("0 ? * * * *"),
            "invalid cron \"0 ? * * * *\": minute field: cannot parse \"?\": \
             ? is only allowed in the day-of-month and day-of-week fields"
        );
        assert_eq!(
            err("0 0 0 ?,1 * *"),
            "invalid cron \"0 0 0 ?,1 * *\": day-of-month field: cannot parse \"?\": \
             ? must stand alone"
        );
    }

    #[test]
    fn error_special_forms_misused() {
        assert_eq!(
            err("0 0 0 L,15 * ?"),
            "invalid cron \"0 0 0 L,15 * ?\": day-of-month field: cannot parse \"L,15\": \
             L and W must stand alone, as in \"L\", \"L-3\", \"LW\" or \"15W\""
        );
        assert_eq!(
            err("0 0 0 ? * 2#1,3"),
            "invalid cron \"0 0 0 ? * 2#1,3\": day-of-week field: cannot parse \"2#1,3\": \
             \"1,3\" is not a number"
        );
        assert_eq!(
            err("0 0 0 ? * 2#6"),
            "invalid cron \"0 0 0 ? * 2#6\": day-of-week field: cannot parse \"2#6\": \
             occurrence 6 after '#' must be 1-5"
        );
        assert_eq!(
            err("0 0 0 ? * 1,6L"),
            "invalid cron \"0 0 0 ? * 1,6L\": day-of-week field: cannot parse \"1,6L\": \
             L and # must stand alone, as in \"6L\" or \"2#1\""
        );
        assert!(err("0 L * * * ?").contains("minute field: cannot parse \"L\""));
        assert!(err("0 0 0 W * ?").contains("L and W must stand alone"));
    }

    /// Brute-force reference: walk day by day, and second by second through matching days,
    /// up to `days` days after `after`.
    fn brute_next(schedule: &Schedule, after: DateTime<Utc>, days: i64) -> Option<DateTime<Utc>> {
        let start = DateTime::<Utc>::from_timestamp(after.timestamp() + 1, 0).unwrap();
        let first_day = start.date_naive();
        for offset in 0..=days {
            let date = first_day + chrono::Duration::days(offset);
            if !schedule.matches_date(date) {
                continue;
            }
            let midnight = date.and_hms_opt(0, 0, 0).unwrap().and_utc();
            for minute in 0..1440 {
                let minute_start = midnight + chrono::Duration::minutes(minute);
                if !schedule.hours.contains(minute_start.hour())
                    || !schedule.minutes.contains(minute_start.minute())
                {
                    continue;
                }
                for s in 0..60 {
                    let t = minute_start + chrono::Duration::seconds(s);
                    if t >= start && schedule.matches(t) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    fn quartz_schedule() -> impl Strategy<Value = String> {
        let sec = prop::sample::select(vec!["0", "*", "*/15", "5,35", "10-20/5", "59"]);
        let min = prop::sample::select(vec!["0", "*", "*/7", "30-40", "0,59"]);
        let hour = prop::sample::select(vec!["*", "*/5", "3", "0,12", "22-23"]);
        let days = prop::sample::select(vec![
            ("*", "?"),
            ("?", "*"),
            ("1,15", "?"),
            ("L", "?"),
            ("10-20", "?"),
            ("?", "2"),
            ("?", "MON-FRI"),
            ("?", "6#2"),
            ("?", "1L"),
            ("LW", "?"),
        ]);
        let month = prop::sample::select(vec!["*", "*", "2", "1-6"]);
        (sec, min, hour, days, month)
            .prop_map(|(s, m, h, (dom, dow), mo)| format!("{s} {m} {h} {dom} {mo} {dow}"))
    }

    fn standard_schedule() -> impl Strategy<Value = String> {
        let min = prop::sample::select(vec!["0", "*", "*/7", "30-40", "0,59"]);
        let hour = prop::sample::select(vec!["*", "*/5", "3", "0,12"]);
        let dom = prop::sample::select(vec!["*", "1,15", "13", "10-12"]);
        let dow = prop::sample::select(vec!["*", "0", "7", "5", "1-5", "SAT,SUN"]);
        (min, hour, dom, dow).prop_map(|(m, h, dom, dow)| format!("{m} {h} {dom} * {dow}"))
    }

    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        // 1990..2090, with sub-second parts.
        (631_152_000i64..3_786_912_000i64, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| DateTime::<Utc>::from_timestamp(secs, nanos).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn next_after_is_first_match_quartz(expr in quartz_schedule(), t in any_time()) {
            let schedule = parse(&expr);
            let got = schedule.next_after(t);
            // Every generated schedule fires at least once a year.
            let want = brute_next(&schedule, t, 400);
            prop_assert!(want.is_some(), "brute force found nothing for {}", expr);
            prop_assert_eq!(got, want, "{} after {}", expr, t);
            let got = got.unwrap();
            prop_assert!(got > t);
            prop_assert!(schedule.matches(got));
        }

        #[test]
        fn next_after_is_first_match_standard(expr in standard_schedule(), t in any_time()) {
            let schedule = parse(&expr);
            let got = schedule.next_after(t);
            let want = brute_next(&schedule, t, 40);
            prop_assert!(want.is_some(), "brute force found nothing for {}", expr);
            prop_assert_eq!(got, want, "{} after {}", expr, t);
            prop_assert!(got.unwrap() > t);
        }

        #[test]
        fn weekday_agrees_with_chrono(days in -1_000_000i64..1_000_000) {
            let date = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + chrono::Duration::days(days);
            prop_assert_eq!(
                weekday(date.year(), date.month(), date.day()),
                date.weekday().num_days_from_sunday()
            );
        }

        #[test]
        fn parsing_garbage_never_panics(s in "[0-9A-Za-z*?/,#@ LW-]{0,30}") {
            if let Ok(schedule) = s.parse::<Schedule>() {
                let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
                if let Some(next) = schedule.next_after(t) {
                    prop_assert!(next > t);
                }
            }
        }
    }
}

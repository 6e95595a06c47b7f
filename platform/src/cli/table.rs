//! How the CLI shows results to people: aligned tables for lists, aligned `name value` lines for
//! one item, and readable times. Scripts use `--json` instead, so none of this is a contract.

use std::fmt::Write as _;

/// Columns separated by two spaces, each as wide as its widest cell.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have as many cells as the header has columns.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(
            cells.len(),
            self.header.len(),
            "row width differs from header"
        );
        self.rows
            .push(cells.into_iter().map(|cell| one_line(&cell)).collect());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self
            .header
            .iter()
            .map(|title| title.chars().count())
            .collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let header = self
            .header
            .iter()
            .map(|title| title.to_string())
            .collect::<Vec<_>>();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index > 0 {
                    line.push_str("  ");
                }
                let _ = write!(line, "{cell:<width$}");
            }
            // Padding the last column would only leave trailing blanks.
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// Prints the table, or `when_empty` instead of a lone header.
    pub fn print_or(&self, when_empty: &str) {
        if self.rows.is_empty() {
            println!("{when_empty}");
        } else {
            print!("{}", self.render());
        }
    }
}

/// One item as `name  value` lines, the values aligned.
pub fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (name, value) in fields {
        let _ = writeln!(text, "{name:<width$}  {}", one_line(value));
    }
    text
}

pub fn print_fields(fields: &[(&str, String)]) {
    print!("{}", render_fields(fields));
}

/// `-` for a missing value, so that columns never look shifted.
pub fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// Unix milliseconds as an RFC 3339 UTC time to the second, e.g. `2025-03-01T14:05:09Z`.
pub fn time(unix_millis: i64) -> String {
    let seconds = unix_millis.div_euclid(1000);
    let mut days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    if days < 0 {
        // The platform has no times before 1970; show the raw value rather than a wrong date.
        return unix_millis.to_string();
    }
    let mut year = 1970;
    loop {
        let length = if is_leap_year(year) { 366 } else { 365 };
        if days < length {
            break;
        }
        days -= length;
        year += 1;
    }
    let february = if is_leap_year(year) { 29 } else { 28 };
    let month_lengths = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for length in month_lengths {
        if days < length {
            break;
        }
        days -= length;
        month += 1;
    }
    format!(
        "{year:04}-{month:02}-{:02}T{:02}:{:02}:{:02}Z",
        days + 1,
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Notes may hold line breaks, and a line break inside a cell would tear the table apart.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(&["ID", "NAME", "ALIAS"]);
        table.row(vec!["1".into(), "Ada Lovelace".into(), "-".into()]);
        table.row(vec!["22".into(), "Bo".into(), "bo".into()]);
        assert_eq!(
            table.render(),
            "ID  NAME          ALIAS\n\
             1   Ada Lovelace  -\n\
             22  Bo            bo\n"
        );
    }

    #[test]
    fn line_breaks_in_cells_do_not_break_rows() {
        let mut table = Table::new(&["NOTE"]);
        table.row(vec!["first\nsecond".into()]);
        assert_eq!(table.render(), "NOTE\nfirst second\n");
    }

    #[test]
    fn field_values_line_up() {
        assert_eq!(
            render_fields(&[("id", "x".into()), ("status", "active".into())]),
            "id      x\nstatus  active\n"
        );
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        // 2024 is a leap year: the day after February 28 is February 29.
        assert_eq!(time(1_709_164_800_000), "2024-02-29T00:00:00Z");
        assert_eq!(time(1_709_251_199_999), "2024-02-29T23:59:59Z");
        assert_eq!(time(1_735_689_599_000), "2024-12-31T23:59:59Z");
        assert_eq!(time(1_735_689_600_000), "2025-01-01T00:00:00Z");
        // 2000 is a leap year although divisible by 100.
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}

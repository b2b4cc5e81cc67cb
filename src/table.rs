//! Aligned text columns, as the command line prints its tables (pure).

/// Rows as columns padded to their widest cell, two spaces apart (pure).
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["NAME".to_string(), "TAG".into(), "X".into()],
            vec!["é-long-name".to_string(), "1.0".into(), String::new()],
        ];
        assert_eq!(align(&rows), "NAME         TAG  X\né-long-name  1.0\n");
    }
}

//! The analyzers over many captures: like `grep` over many files, each line
//! an analyzer prints starts with the capture's name (`run-17: `).

use std::io::{self, Write};

/// A writer that starts every line with `prefix`.
pub struct LinePrefix<'a> {
    inner: &'a mut dyn Write,
    prefix: Vec<u8>,
    /// The next byte written starts a line.
    at_line_start: bool,
}

impl<'a> LinePrefix<'a> {
    /// Lines of capture `name`, written to `inner`.
    pub fn capture(inner: &'a mut dyn Write, name: &str) -> LinePrefix<'a> {
        LinePrefix {
            inner,
            prefix: format!("{name}: ").into_bytes(),
            at_line_start: true,
        }
    }
}

impl Write for LinePrefix<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                self.inner.write_all(&self.prefix)?;
            }
            self.inner.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_starts_with_the_name_however_it_is_written() {
        let mut out = Vec::new();
        {
            let mut w = LinePrefix::capture(&mut out, "run-1");
            w.write_all(b"a\nb").unwrap();
            w.write_all(b"c\n").unwrap();
            w.write_all(b"\nd\n").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "run-1: a\nrun-1: bc\nrun-1: \nrun-1: d\n"
        );
    }
}

//! The one part of a `.drv` file the daemon reads: its outputs, from Nix's
//! ATerm form `Derive([("out","/nix/store/…-x","",""),…],…)`.

/// The (name, path) of each output, in file order; the path is empty for a
/// floating content-addressed output.
pub(crate) fn outputs(text: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut p = Parser { text, at: 0 };
    p.expect(b"Derive([")?;
    let mut out = Vec::new();
    if p.peek() == Some(b']') {
        return Ok(out);
    }
    loop {
        p.expect(b"(")?;
        let name = p.string()?;
        p.expect(b",")?;
        let path = p.string()?;
        for _ in 0..2 {
            p.expect(b",")?;
            p.string()?;
        }
        p.expect(b")")?;
        out.push((name, path));
        match p.next() {
            Some(b',') => continue,
            Some(b']') => return Ok(out),
            _ => return Err(format!("expected ',' or ']' at byte {}", p.at)),
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn expect(&mut self, what: &[u8]) -> Result<(), String> {
        if self.text[self.at..].starts_with(what) {
            self.at += what.len();
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at byte {}",
                String::from_utf8_lossy(what),
                self.at
            ))
        }
    }

    /// A quoted string with Nix's escapes (`\"`, `\\`, `\n`, `\r`, `\t`).
    fn string(&mut self) -> Result<String, String> {
        self.expect(b"\"")?;
        let mut s = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated string".into()),
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b'n') => s.push(b'\n'),
                    Some(b'r') => s.push(b'\r'),
                    Some(b't') => s.push(b'\t'),
                    Some(c) => s.push(c),
                    None => return Err("unterminated string".into()),
                },
                Some(c) => s.push(c),
            }
        }
        String::from_utf8(s).map_err(|_| format!("a string before byte {} is not UTF-8", self.at))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn outputs_of_a_derivation() {
        let drv = br#"Derive([("dev","/nix/store/aaaa-x-dev","",""),("out","/nix/store/bbbb-x","",""),("ca","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",["-c","echo \"hi\""],[("out","/nix/store/bbbb-x")])"#;
        assert_eq!(
            super::outputs(drv).unwrap(),
            [
                ("dev".to_owned(), "/nix/store/aaaa-x-dev".to_owned()),
                ("out".to_owned(), "/nix/store/bbbb-x".to_owned()),
                ("ca".to_owned(), String::new()),
            ]
        );
        assert!(super::outputs(b"Derive([(\"out\"").is_err());
        assert!(super::outputs(b"nonsense").is_err());
    }
}

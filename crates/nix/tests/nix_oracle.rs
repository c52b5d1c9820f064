//! Hashes and store paths against the real Nix, run now on random inputs.
//!
//! Needs `nix`, `nix-store` and `nix-instantiate` (Nix 2.8) on PATH and fails
//! (never skips) without them. Nix writes only to a throw-away chroot store. Inputs
//! come from a seed printed on stderr; set `CAIRN_TEST_SEED` to replay a failure.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;

use cairn_nix::hash::{HashAlgo, HashingWriter, NixHash};
use cairn_nix::nixbase32;
use cairn_nix::store_path::{self, FileIngestionMethod, StorePath};

/// SplitMix64: small, seedable, good enough to pick test inputs.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("CAIRN_TEST_SEED") {
            Ok(s) => s.parse().expect("CAIRN_TEST_SEED must be a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("{test}: CAIRN_TEST_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn string(&mut self, alphabet: &str, min: usize, max: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let len = min + self.below(max - min + 1);
        (0..len).map(|_| *self.pick(&chars)).collect()
    }
}

const NAME_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-._?=";

/// The real Nix with its own cache dir and chroot store.
struct Nix {
    scratch: cairn_testkit::nix::Nix,
    store: String,
}

impl Nix {
    fn new() -> Nix {
        let scratch = cairn_testkit::nix::Nix::new();
        let store = scratch.store().to_str().unwrap().to_owned();
        Nix { scratch, store }
    }

    /// Runs a Nix program; `Ok(stdout)` or `Err(stderr)`.
    fn try_run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = cairn_testkit::nix::output(self.scratch.command(program).args(args));
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        self.scratch.run(program, args)
    }

    fn store_arg(&self) -> &str {
        &self.store
    }

    /// Evaluates a Nix expression to a list of strings.
    fn eval_strings(&self, expr: &str) -> Vec<String> {
        let out = self.run(
            "nix-instantiate",
            &[
                "--store",
                self.store_arg(),
                "--eval",
                "--strict",
                "--json",
                "-E",
                expr,
            ],
        );
        // A JSON list of store paths, which contain no quotes or escapes.
        out.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_matches('"').to_owned())
            .collect()
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn hash_conversions_of_random_digests() {
    let nix = Nix::new();
    let mut rng = Rng::from_env("hash_conversions_of_random_digests");
    for algo in HashAlgo::ALL {
        let hashes: Vec<NixHash> = (0..200)
            .map(|_| NixHash::from_digest(algo, &rng.bytes(algo.digest_len())).unwrap())
            .collect();
        let hexes: Vec<String> = hashes.iter().map(NixHash::to_hex).collect();
        let convert = |to: &str, inputs: &[String]| {
            let mut args = vec!["hash", to, "--type", algo.name()];
            args.extend(inputs.iter().map(String::as_str));
            words(&nix.run("nix", &args))
        };
        let ours = |f: fn(&NixHash) -> String| hashes.iter().map(f).collect::<Vec<_>>();
        assert_eq!(convert("to-base32", &hexes), ours(NixHash::to_nix32));
        assert_eq!(convert("to-base64", &hexes), ours(NixHash::to_base64));
        assert_eq!(convert("to-sri", &hexes), ours(NixHash::to_sri));
        // Nix reads what we print.
        assert_eq!(convert("to-base16", &ours(NixHash::to_nix32)), hexes);
        assert_eq!(convert("to-base16", &ours(NixHash::to_sri)), hexes);
        assert_eq!(
            convert("to-base16", &ours(NixHash::to_nix32_prefixed)),
            hexes
        );
    }
}

#[test]
fn nix32_acceptance_agrees_with_nix() {
    // Random strings of the right length: Nix and we must accept the same ones
    // (first-character padding bits, bad characters) and decode them alike.
    let nix = Nix::new();
    let mut rng = Rng::from_env("nix32_acceptance_agrees_with_nix");
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..40 {
        let algo = *rng.pick(&[HashAlgo::Md5, HashAlgo::Sha256, HashAlgo::Sha512]);
        let alphabet = if i % 4 == 3 {
            "0123456789abcdefghijklmnopqrstuvwxyz"
        } else {
            "0123456789abcdfghijklmnpqrsvwxyz"
        };
        let mut s = rng.string(alphabet, algo.nix32_len(), algo.nix32_len());
        if i % 2 == 0 {
            // Valid padding, so that both outcomes are well represented.
            s.replace_range(0..1, "0");
        }
        let theirs = nix.try_run("nix", &["hash", "to-base16", "--type", algo.name(), &s]);
        let ours = nixbase32::decode(&s);
        match (theirs, ours) {
            (Ok(hex), Ok(bytes)) => {
                accepted += 1;
                assert_eq!(
                    hex.trim(),
                    NixHash::from_digest(algo, &bytes).unwrap().to_hex()
                );
            }
            (Err(_), Err(_)) => rejected += 1,
            (theirs, ours) => panic!("{algo} {s}: Nix {theirs:?}, cairn {ours:?}"),
        }
    }
    assert!(accepted >= 10 && rejected >= 10, "{accepted} {rejected}");
}

#[test]
fn hasher_matches_nix_hash_file() {
    let nix = Nix::new();
    let mut rng = Rng::from_env("hasher_matches_nix_hash_file");
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0, 1, 63, 64, 65, 1000, 300_000 + rng.below(100_000)];
    let mut files = vec![];
    for (i, size) in sizes.into_iter().enumerate() {
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, rng.bytes(size)).unwrap();
        files.push(path.to_str().unwrap().to_owned());
    }
    for algo in HashAlgo::ALL {
        let mut args = vec!["hash", "file", "--base16", "--type", algo.name()];
        args.extend(files.iter().map(String::as_str));
        let theirs = words(&nix.run("nix", &args));
        let ours: Vec<String> = files
            .iter()
            .map(|f| {
                let data = std::fs::read(f).unwrap();
                let mut w = HashingWriter::new(std::io::sink(), algo);
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len().min(70_000));
                    w.write_all(&rest[..n]).unwrap();
                    rest = &rest[n..];
                }
                let (_, h, len) = w.finish();
                assert_eq!(len, data.len() as u64);
                h.to_hex()
            })
            .collect();
        assert_eq!(ours, theirs, "{algo}");
    }
}

#[test]
fn fixed_output_paths_of_random_hashes() {
    let nix = Nix::new();
    let mut rng = Rng::from_env("fixed_output_paths_of_random_hashes");
    let mut cases = vec![];
    let mut expr = String::from("[\n");
    for _ in 0..120 {
        let algo = *rng.pick(&HashAlgo::ALL);
        let method = *rng.pick(&[FileIngestionMethod::Flat, FileIngestionMethod::Recursive]);
        let hash = NixHash::from_digest(algo, &rng.bytes(algo.digest_len())).unwrap();
        let mut name = rng.string(NAME_CHARS, 1, 40);
        if name.starts_with('-') {
            name.insert(0, 'x');
        }
        let mode = match method {
            FileIngestionMethod::Flat => "flat",
            FileIngestionMethod::Recursive => "recursive",
        };
        expr.push_str(&format!(
            "(derivation {{ name = \"{name}\"; system = \"x\"; builder = \"x\"; \
             outputHashMode = \"{mode}\"; outputHashAlgo = \"{algo}\"; outputHash = \"{}\"; }}).outPath\n",
            hash.to_hex()
        ));
        cases.push((method, hash, name));
    }
    expr.push(']');
    let theirs = nix.eval_strings(&expr);
    assert_eq!(theirs.len(), cases.len());
    for ((method, hash, name), theirs) in cases.iter().zip(&theirs) {
        let ours = store_path::make_fixed_output_path(*method, hash, name, [], false).unwrap();
        assert_eq!(&ours.to_absolute(), theirs, "{method:?} {hash} {name}");
    }

    // The CLI route for a few, with the hash in nixbase32.
    for (method, hash, name) in cases.iter().take(6) {
        let mut args = vec!["--store", nix.store_arg(), "--print-fixed-path"];
        if *method == FileIngestionMethod::Recursive {
            args.push("--recursive");
        }
        let nix32 = hash.to_nix32();
        args.extend([hash.algo().name(), &nix32, name]);
        let theirs = nix.run("nix-store", &args);
        let ours = store_path::make_fixed_output_path(*method, hash, name, [], false).unwrap();
        assert_eq!(ours.to_absolute(), theirs.trim());
    }
}

#[test]
fn text_paths_of_random_files() {
    // builtins.toFile with random names and contents, referencing earlier files
    // through string context.
    let nix = Nix::new();
    let mut rng = Rng::from_env("text_paths_of_random_files");
    let content_chars = "abcxyz0189 \n\t\"\\$'{}-_.:/";
    let mut expr = String::from("let\n");
    let mut cases: Vec<(String, String, Vec<usize>)> = vec![];
    for i in 0..60 {
        let mut name = rng.string(NAME_CHARS, 1, 30);
        if name.starts_with('-') {
            name.insert(0, 'x');
        }
        let contents = rng.string(content_chars, 0, 300);
        let refs: Vec<usize> = if i == 0 {
            vec![]
        } else {
            (0..rng.below(4)).map(|_| rng.below(i)).collect()
        };
        let literal = contents
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            // Every `$`, not only `${`: `"$${f1}"` would be a literal `$${f1}`.
            .replace('$', "\\$")
            .replace('\n', "\\n")
            .replace('\t', "\\t");
        let interpolated: String = refs.iter().map(|r| format!("${{f{r}}}")).collect();
        expr.push_str(&format!(
            "  f{i} = builtins.toFile \"{name}\" \"{literal}{interpolated}\";\n"
        ));
        cases.push((name, contents, refs));
    }
    expr.push_str("in [ ");
    expr.extend((0..cases.len()).map(|i| format!("f{i} ")));
    expr.push(']');
    let theirs = nix.eval_strings(&expr);
    assert_eq!(theirs.len(), cases.len());

    let mut ours: Vec<StorePath> = vec![];
    for ((name, contents, refs), theirs) in cases.iter().zip(&theirs) {
        let mut full = contents.clone();
        let mut ref_paths = vec![];
        for &r in refs {
            full.push_str(&ours[r].to_absolute());
            ref_paths.push(ours[r].clone());
        }
        let p = store_path::make_text_path_for_content(name, full.as_bytes(), &ref_paths).unwrap();
        assert_eq!(&p.to_absolute(), theirs, "{name}");
        ours.push(p);
    }
}

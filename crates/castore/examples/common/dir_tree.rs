// Shared by the PostgreSQL directory example and tests (included with `include!`):
// a closure of directories, leaves first and root last, as a DirectoryPutter takes it.
// Needs `Directory`, `Node`, `PathComponent` and `B3Digest` in scope.

/// `leaves` leaf directories of `files` files each, under parents of `fanout`
/// children, level by level up to one root.
fn dir_tree(leaves: u64, files: u64, fanout: usize) -> Vec<Directory> {
    let entry = |n: &str| PathComponent::try_from(n).expect("a valid name");
    let mut all: Vec<Directory> = (0..leaves)
        .map(|i| {
            let mut d = Directory::new();
            for f in 0..files {
                d.add(
                    entry(&format!("file-{f}")),
                    Node::File {
                        digest: B3Digest::of(&(i * files + f).to_le_bytes()),
                        size: i + f,
                        executable: f == 2,
                    },
                )
                .expect("distinct names");
            }
            d
        })
        .collect();
    let mut level = all.clone();
    while level.len() > 1 {
        let parents: Vec<Directory> = level
            .chunks(fanout)
            .map(|kids| {
                let mut p = Directory::new();
                for (i, k) in kids.iter().enumerate() {
                    p.add(
                        entry(&format!("dir-{i}")),
                        Node::Directory {
                            digest: k.digest(),
                            size: k.size(),
                        },
                    )
                    .expect("distinct names");
                }
                p
            })
            .collect();
        all.extend(parents.iter().cloned());
        level = parents;
    }
    all
}

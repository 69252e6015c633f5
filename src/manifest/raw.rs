//! The manifest's schema, once: what serde reads, with borrowed strings.
//!
//! Only the shape is enforced here (JSON, known keys, each key once, types). Fields whose value
//! can be wrong in meaning (paths, modes, names, ids) are read leniently, as strings and JSON
//! numbers, so that the semantic pass (`semantic`) can report every such problem at once and
//! name the entry. serde stops at the first structural error, which is then the only one.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Number;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw<'a> {
    pub version: Number,
    #[serde(borrow)]
    pub storages: Vec<RawStorage<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStorage<'a> {
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub mount_point: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub directories: Chunks<RawDirectory<'a>>,
    #[serde(borrow, default)]
    pub files: Chunks<RawFile<'a>>,
}

/// A JSON list read in chunks of a fixed size. A `Vec` read from JSON, whose length is not
/// known in advance, grows by copying everything read so far; its chunks never move, so the
/// thousand raw entries of a large manifest are written once, in pages touched once.
pub struct Chunks<T> {
    chunks: Vec<Vec<T>>,
}

impl<T> Chunks<T> {
    const SIZE: usize = 64;

    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks { chunks: Vec::new() }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Chunks<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct List<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for List<T> {
            type Value = Chunks<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Chunks<T>, A::Error> {
                let mut list = Chunks::default();
                while let Some(item) = seq.next_element()? {
                    match list.chunks.last_mut() {
                        Some(chunk) if chunk.len() < Chunks::<T>::SIZE => chunk.push(item),
                        _ => {
                            let mut chunk = Vec::with_capacity(Chunks::<T>::SIZE);
                            chunk.push(item);
                            list.chunks.push(chunk);
                        }
                    }
                }
                Ok(list)
            }
        }
        deserializer.deserialize_seq(List(std::marker::PhantomData))
    }
}

/// A directory entry. Its owner and mode fields repeat `RawAttrs` because serde cannot flatten
/// a struct into one that denies unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory<'a> {
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub group: Option<Cow<'a, str>>,
    pub uid: Option<Number>,
    pub gid: Option<Number>,
    #[serde(borrow)]
    pub mode: Option<Cow<'a, str>>,
    /// Boxed: rare, and 104 bytes inline in every entry of a list that grows by copying.
    #[serde(borrow)]
    pub parent: Option<Box<RawAttrs<'a>>>,
    #[serde(borrow)]
    pub origin: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile<'a> {
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub parent: Option<Box<RawAttrs<'a>>>,
    #[serde(borrow)]
    pub origin: Option<Cow<'a, str>>,
}

/// Owner and mode of missing parents; every field defaults (root, root, 0755).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttrs<'a> {
    #[serde(borrow)]
    pub user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub group: Option<Cow<'a, str>>,
    pub uid: Option<Number>,
    pub gid: Option<Number>,
    #[serde(borrow)]
    pub mode: Option<Cow<'a, str>>,
}

impl RawDirectory<'_> {
    /// The directory's own owner and mode fields.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            user: self.user.as_deref(),
            group: self.group.as_deref(),
            uid: self.uid.as_ref(),
            gid: self.gid.as_ref(),
            mode: self.mode.as_deref(),
        }
    }
}

impl RawAttrs<'_> {
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            user: self.user.as_deref(),
            group: self.group.as_deref(),
            uid: self.uid.as_ref(),
            gid: self.gid.as_ref(),
            mode: self.mode.as_deref(),
        }
    }
}

/// Owner and mode fields as read, wherever they stand (a directory or its `parent`).
#[derive(Clone, Copy)]
pub struct Fields<'r> {
    pub user: Option<&'r str>,
    pub group: Option<&'r str>,
    pub uid: Option<&'r Number>,
    pub gid: Option<&'r Number>,
    pub mode: Option<&'r str>,
}

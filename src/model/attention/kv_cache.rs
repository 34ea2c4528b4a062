//! The keys and values one attention layer has produced so far during incremental
//! decoding, in a buffer allocated once for the model's maximum length so that a new
//! token costs a copy of its own row only.

use tch::Tensor;

#[derive(Debug)]
pub struct KvCache {
    /// (B, H, capacity, Dh); rows 0..len hold data.
    keys: Tensor,
    /// (B, H, capacity, Dh); rows 0..len hold data.
    values: Tensor,
    len: i64,
}

impl KvCache {
    /// A cache holding the given rows, with room for `capacity` in all.
    ///
    /// # Shapes
    /// `keys`, `values`: (B, H, P, Dh) with P ≤ capacity.
    pub fn new(keys: &Tensor, values: &Tensor, capacity: i64) -> Self {
        let (b, h, p, dh) = keys.size4().unwrap();
        assert!(p <= capacity, "a {p}-token prefix does not fit a {capacity}-token cache");
        let buffer = || Tensor::zeros([b, h, capacity, dh], (keys.kind(), keys.device()));
        let cache = Self { keys: buffer(), values: buffer(), len: p };
        cache.keys.narrow(2, 0, p).copy_(keys);
        cache.values.narrow(2, 0, p).copy_(values);
        cache
    }

    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one position.
    ///
    /// # Shapes
    /// `key`, `value`: (B, H, 1, Dh).
    pub fn push(&mut self, key: &Tensor, value: &Tensor) {
        let capacity = self.keys.size()[2];
        assert!(self.len < capacity, "the decoding cache is full ({capacity} tokens)");
        self.keys.narrow(2, self.len, 1).copy_(key);
        self.values.narrow(2, self.len, 1).copy_(value);
        self.len += 1;
    }

    /// Keys and values of positions `start..len`.
    ///
    /// # Shapes
    /// returns two (B, H, len − start, Dh)
    pub fn since(&self, start: i64) -> (Tensor, Tensor) {
        let n = self.len - start;
        (self.keys.narrow(2, start, n), self.values.narrow(2, start, n))
    }

    /// The whole buffers (rows at or past `len` are zeros), for gathering rows by
    /// position.
    ///
    /// # Shapes
    /// returns two (B, H, capacity, Dh)
    pub fn buffers(&self) -> (&Tensor, &Tensor) {
        (&self.keys, &self.values)
    }
}

/* The compiled fast path of lm.tokenizer.Tokenizer: GPT-2 pre-tokenization and BPE in C.
 *
 * Optional: setup.py builds it when a C compiler is there; without it lm uses
 * the pure-Python path (lm/tokenizer/tokenizer.py), which stays the reference
 * that the tests compare this against.
 *
 * Encoder(byte_ids, merge_pairs, merge_result, classes, classify, long_bpe, max_entries)
 *   byte_ids      256 ints: the id of each single byte
 *   merge_pairs   list of (left id, right id) in rank order (the first of equal pairs wins)
 *   merge_result  list of the id each merge makes
 *   classes       bytes of 65536: the class of each BMP code point under GPT-2's pattern
 *                 (0 other, 1 whitespace \s, 2 letter \p{L}, 3 number \p{N}), taken from the
 *                 `regex` module itself so both paths agree on every Unicode version
 *   classify      callable(code point) -> class, for code points above the BMP (memoised here)
 *   long_bpe      callable(str) -> sequence of ids, for pre-tokens over LONG_PIECE bytes (the
 *                 pure-Python heap BPE: the loop here is quadratic in a pre-token's length)
 *   max_entries   distinct pre-tokens cached before the cache is cleared
 *
 * Encoder.encode(text) -> list of ids, or None when the text holds a lone surrogate (the
 * Python path then reports it). Encoder.encode_bytes(text, itemsize) -> the same ids as
 * little-endian uint16 (itemsize 2) or uint32 (itemsize 4) bytes, or None.
 *
 * The pre-tokenizer is GPT-2's regex written out by hand:
 *   '(?:[sdmt]|ll|ve|re) | ' '?L+ | ' '?N+ | ' '?[^\s L N]+ | \s+(?!\S) | \s+
 * tried in that order at each position (see match_end).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define CLS_OTHER 0
#define CLS_SPACE 1
#define CLS_LETTER 2
#define CLS_NUMBER 3
#define CLS_UNKNOWN 255
#define LONG_PIECE 256
#define NO_MERGE INT32_MAX

/* ----- a growable array of int32 */

typedef struct {
    int32_t *data;
    size_t len, cap;
} IntBuf;

static int intbuf_reserve(IntBuf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) cap *= 2;
    int32_t *p = PyMem_Realloc(b->data, cap * sizeof(int32_t));
    if (!p) { PyErr_NoMemory(); return -1; }
    b->data = p;
    b->cap = cap;
    return 0;
}

/* ----- the pre-token cache: UTF-8 bytes -> ids, open addressing, arenas for keys and values */

typedef struct {
    uint64_t hash;   /* 0: empty slot */
    uint32_t key_off, key_len, val_off, val_len;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask, count;
    uint8_t *keys;
    size_t keys_len, keys_cap;
    IntBuf vals;
} PieceCache;

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;  /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    h ^= h >> 29; h *= 0xbf58476d1ce4e5b9ULL; h ^= h >> 32;
    return h ? h : 1;
}

static int cache_init(PieceCache *c, size_t slots) {
    memset(c, 0, sizeof(*c));
    c->slots = PyMem_Calloc(slots, sizeof(Slot));
    if (!c->slots) { PyErr_NoMemory(); return -1; }
    c->mask = slots - 1;
    return 0;
}

static void cache_free(PieceCache *c) {
    PyMem_Free(c->slots);
    PyMem_Free(c->keys);
    PyMem_Free(c->vals.data);
    memset(c, 0, sizeof(*c));
}

static void cache_clear(PieceCache *c) {
    memset(c->slots, 0, (c->mask + 1) * sizeof(Slot));
    c->count = 0;
    c->keys_len = 0;
    c->vals.len = 0;
}

/* The slot holding key, or the empty slot where it would go. */
static Slot *cache_find(PieceCache *c, const uint8_t *key, size_t n, uint64_t h) {
    size_t i = (size_t)h & c->mask;
    for (;;) {
        Slot *s = &c->slots[i];
        if (s->hash == 0) return s;
        if (s->hash == h && s->key_len == n && memcmp(c->keys + s->key_off, key, n) == 0) return s;
        i = (i + 1) & c->mask;
    }
}

static int cache_grow(PieceCache *c) {
    size_t old_n = c->mask + 1;
    Slot *old = c->slots;
    Slot *slots = PyMem_Calloc(old_n * 2, sizeof(Slot));
    if (!slots) { PyErr_NoMemory(); return -1; }
    c->slots = slots;
    c->mask = old_n * 2 - 1;
    for (size_t i = 0; i < old_n; i++) {
        if (old[i].hash == 0) continue;
        size_t j = (size_t)old[i].hash & c->mask;
        while (c->slots[j].hash) j = (j + 1) & c->mask;
        c->slots[j] = old[i];
    }
    PyMem_Free(old);
    return 0;
}

/* Store key -> ids in an empty slot found by cache_find (which may move if the table grows). */
static int cache_insert(PieceCache *c, Slot *s, const uint8_t *key, size_t n, uint64_t h,
                        const int32_t *ids, size_t m) {
    if (c->keys_len + n > c->keys_cap) {
        size_t cap = c->keys_cap ? c->keys_cap : 1 << 16;
        while (cap < c->keys_len + n) cap *= 2;
        uint8_t *p = PyMem_Realloc(c->keys, cap);
        if (!p) { PyErr_NoMemory(); return -1; }
        c->keys = p;
        c->keys_cap = cap;
    }
    if (intbuf_reserve(&c->vals, m) < 0) return -1;
    memcpy(c->keys + c->keys_len, key, n);
    memcpy(c->vals.data + c->vals.len, ids, m * sizeof(int32_t));
    s->hash = h;
    s->key_off = (uint32_t)c->keys_len;
    s->key_len = (uint32_t)n;
    s->val_off = (uint32_t)c->vals.len;
    s->val_len = (uint32_t)m;
    c->keys_len += n;
    c->vals.len += m;
    c->count++;
    if (c->count * 2 > c->mask + 1) return cache_grow(c);
    return 0;
}

/* ----- the encoder object */

typedef struct {
    PyObject_HEAD
    int32_t byte_ids[256];
    /* merge pair (a, b) -> rank, open addressing on key a << 32 | b (+1 so that 0 is empty) */
    uint64_t *pair_keys;
    int32_t *pair_rank;
    size_t pair_mask;
    int32_t *merge_result;
    Py_ssize_t num_merges;
    uint8_t classes[65536];
    uint8_t *astral;          /* 0x100000 classes above the BMP, CLS_UNKNOWN until asked */
    PyObject *classify;
    PyObject *long_bpe;
    PieceCache cache;
    size_t max_entries;
    int busy;  /* inside encode_into: a callback let another thread in (see encode_into) */
} Encoder;

static inline uint64_t pair_key(int32_t a, int32_t b) {
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static inline size_t pair_slot(uint64_t key, size_t mask) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 20) & mask;
}

static inline int32_t get_rank(const Encoder *e, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    size_t i = pair_slot(key, e->pair_mask);
    for (;;) {
        uint64_t k = e->pair_keys[i];
        if (k == key) return e->pair_rank[i];
        if (k == 0) return NO_MERGE;
        i = (i + 1) & e->pair_mask;
    }
}

/* The class of code point cp, or -1 with an exception set. */
static int char_class(Encoder *e, Py_UCS4 cp) {
    if (cp < 0x10000) return e->classes[cp];
    if (!e->astral) {
        e->astral = PyMem_Malloc(0x100000);
        if (!e->astral) { PyErr_NoMemory(); return -1; }
        memset(e->astral, CLS_UNKNOWN, 0x100000);
    }
    uint8_t c = e->astral[cp - 0x10000];
    if (c != CLS_UNKNOWN) return c;
    PyObject *r = PyObject_CallFunction(e->classify, "I", (unsigned int)cp);
    if (!r) return -1;
    long v = PyLong_AsLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > 3) { PyErr_SetString(PyExc_ValueError, "classify returned a class outside 0..3"); return -1; }
    e->astral[cp - 0x10000] = (uint8_t)v;
    return (int)v;
}

/* The text as code points with their classes, read once. */
typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
    uint8_t *cls;
} Text;

static inline Py_UCS4 at(const Text *t, Py_ssize_t i) { return PyUnicode_READ(t->kind, t->data, i); }

/* End of the pre-token that starts at i (GPT-2's regex, alternatives in order). */
static Py_ssize_t match_end(const Text *t, Py_ssize_t i) {
    const Py_ssize_t n = t->n;
    const uint8_t *cls = t->cls;
    Py_UCS4 c = at(t, i);
    if (c == '\'' && i + 1 < n) {
        Py_UCS4 d = at(t, i + 1);
        if (d == 's' || d == 'd' || d == 'm' || d == 't') return i + 2;
        if (i + 2 < n) {
            Py_UCS4 f = at(t, i + 2);
            if ((d == 'l' && f == 'l') || (d == 'v' && f == 'e') || (d == 'r' && f == 'e')) return i + 3;
        }
    }
    Py_ssize_t j = i;
    int k = cls[i];
    if (c == ' ' && i + 1 < n && cls[i + 1] != CLS_SPACE) {  /* ' ?' then a letter, number or other run */
        j = i + 1;
        k = cls[j];
    }
    if (k != CLS_SPACE) {
        j++;
        while (j < n && cls[j] == k) j++;
        return j;
    }
    /* whitespace: \s+(?!\S) leaves the run's last character to a following non-space, \s+ takes one */
    j = i + 1;
    while (j < n && cls[j] == CLS_SPACE) j++;
    if (j == n) return n;
    return j - 1 > i ? j - 1 : j;
}

/* BPE of one pre-token's bytes (n <= LONG_PIECE) into out; returns the number of ids. */
static Py_ssize_t bpe_short(const Encoder *e, const uint8_t *p, Py_ssize_t n, int32_t *out) {
    int32_t ranks[LONG_PIECE];
    for (Py_ssize_t i = 0; i < n; i++) out[i] = e->byte_ids[p[i]];
    if (n < 2) return n;
    Py_ssize_t m = n;
    for (Py_ssize_t i = 0; i + 1 < m; i++) ranks[i] = get_rank(e, out[i], out[i + 1]);
    while (m > 1) {
        int32_t best = NO_MERGE;
        Py_ssize_t at_ = 0;
        for (Py_ssize_t i = 0; i + 1 < m; i++) {
            if (ranks[i] < best) { best = ranks[i]; at_ = i; }  /* strict: leftmost of the lowest */
        }
        if (best == NO_MERGE) break;
        out[at_] = e->merge_result[best];
        memmove(out + at_ + 1, out + at_ + 2, (m - at_ - 2) * sizeof(int32_t));
        memmove(ranks + at_, ranks + at_ + 1, (m - at_ - 2) * sizeof(int32_t));
        m--;
        if (at_ > 0) ranks[at_ - 1] = get_rank(e, out[at_ - 1], out[at_]);
        if (at_ + 1 < m) ranks[at_] = get_rank(e, out[at_], out[at_ + 1]);
    }
    return m;
}

/* Ids of a long pre-token from the Python heap BPE, appended to out. */
static int bpe_long(Encoder *e, PyObject *text, Py_ssize_t i, Py_ssize_t j, IntBuf *out) {
    PyObject *piece = PyUnicode_Substring(text, i, j);
    if (!piece) return -1;
    PyObject *ids = PyObject_CallOneArg(e->long_bpe, piece);
    Py_DECREF(piece);
    if (!ids) return -1;
    PyObject *seq = PySequence_Fast(ids, "long_bpe must return a sequence of ids");
    Py_DECREF(ids);
    if (!seq) return -1;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    if (intbuf_reserve(out, m) < 0) { Py_DECREF(seq); return -1; }
    for (Py_ssize_t k = 0; k < m; k++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, k));
        if (v == -1 && PyErr_Occurred()) { Py_DECREF(seq); return -1; }
        out->data[out->len++] = (int32_t)v;
    }
    Py_DECREF(seq);
    return 0;
}

/* UTF-8 bytes of text[i:j] into buf (4 bytes per code point at most); -2 on a lone surrogate. */
static Py_ssize_t utf8_of(const Text *t, Py_ssize_t i, Py_ssize_t j, uint8_t *buf) {
    Py_ssize_t n = 0;
    for (Py_ssize_t k = i; k < j; k++) {
        Py_UCS4 c = at(t, k);
        if (c < 0x80) buf[n++] = (uint8_t)c;
        else if (c < 0x800) { buf[n++] = 0xC0 | (c >> 6); buf[n++] = 0x80 | (c & 0x3F); }
        else if (c < 0x10000) {
            if (c >= 0xD800 && c <= 0xDFFF) return -2;
            buf[n++] = 0xE0 | (c >> 12); buf[n++] = 0x80 | ((c >> 6) & 0x3F); buf[n++] = 0x80 | (c & 0x3F);
        } else {
            buf[n++] = 0xF0 | (c >> 18); buf[n++] = 0x80 | ((c >> 12) & 0x3F);
            buf[n++] = 0x80 | ((c >> 6) & 0x3F); buf[n++] = 0x80 | (c & 0x3F);
        }
    }
    return n;
}

/* The ids of text into out (see encode_into). */
static int encode_text(Encoder *e, PyObject *text, IntBuf *out) {
    Text t;
    t.kind = PyUnicode_KIND(text);
    t.data = PyUnicode_DATA(text);
    t.n = PyUnicode_GET_LENGTH(text);
    if (t.n == 0) return 0;
    int ascii = PyUnicode_IS_ASCII(text);
    t.cls = PyMem_Malloc(t.n);
    if (!t.cls) { PyErr_NoMemory(); return -1; }
    if (ascii) {
        const uint8_t *s = t.data;
        for (Py_ssize_t k = 0; k < t.n; k++) t.cls[k] = e->classes[s[k]];
    } else {
        for (Py_ssize_t k = 0; k < t.n; k++) {
            int c = char_class(e, at(&t, k));
            if (c < 0) { PyMem_Free(t.cls); return -1; }
            t.cls[k] = (uint8_t)c;
        }
    }
    uint8_t *scratch = NULL;  /* UTF-8 of a non-ASCII pre-token */
    size_t scratch_cap = 0;
    int32_t piece_ids[LONG_PIECE];
    int status = 0;
    Py_ssize_t i = 0;
    while (i < t.n) {
        Py_ssize_t j = match_end(&t, i);
        const uint8_t *key;
        Py_ssize_t len;
        if (ascii) {
            key = (const uint8_t *)t.data + i;
            len = j - i;
        } else {
            size_t need = (size_t)(j - i) * 4;
            if (need > scratch_cap) {
                uint8_t *p = PyMem_Realloc(scratch, need);
                if (!p) { PyErr_NoMemory(); status = -1; break; }
                scratch = p;
                scratch_cap = need;
            }
            len = utf8_of(&t, i, j, scratch);
            if (len == -2) { status = 1; break; }
            key = scratch;
        }
        uint64_t h = hash_bytes(key, len);
        Slot *s = cache_find(&e->cache, key, len, h);
        if (s->hash) {
            if (intbuf_reserve(out, s->val_len) < 0) { status = -1; break; }
            memcpy(out->data + out->len, e->cache.vals.data + s->val_off, s->val_len * sizeof(int32_t));
            out->len += s->val_len;
        } else {
            size_t before = out->len;
            if (len > LONG_PIECE) {
                if (bpe_long(e, text, i, j, out) < 0) { status = -1; break; }
            } else {
                Py_ssize_t m = bpe_short(e, key, len, piece_ids);
                if (intbuf_reserve(out, m) < 0) { status = -1; break; }
                memcpy(out->data + out->len, piece_ids, m * sizeof(int32_t));
                out->len += m;
            }
            if (e->cache.count >= e->max_entries) {
                cache_clear(&e->cache);
                s = cache_find(&e->cache, key, len, h);
            }
            if (len <= 4096 &&  /* bounds the cache (and its uint32 offsets): blobs without spaces are not kept */
                cache_insert(&e->cache, s, key, len, h, out->data + before, out->len - before) < 0) {
                status = -1;
                break;
            }
        }
        i = j;
    }
    PyMem_Free(scratch);
    PyMem_Free(t.cls);
    return status;
}

/* The ids of text into out: 0, -1 with an exception, or 1 when the Python path must encode it
   (a lone surrogate, or the encoder is busy: a callback into Python released the GIL and another
   thread came in, and the cache must not change under the first one's feet). */
static int encode_into(Encoder *e, PyObject *text, IntBuf *out) {
    if (!e->pair_keys || !e->classify || !e->long_bpe) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder was not initialised");
        return -1;
    }
    if (e->busy) return 1;
    e->busy = 1;
    int status = encode_text(e, text, out);
    e->busy = 0;
    return status;
}

static PyObject *Encoder_encode(Encoder *e, PyObject *text) {
    if (!PyUnicode_Check(text)) { PyErr_SetString(PyExc_TypeError, "encode expects a str"); return NULL; }
    IntBuf out = {0};
    int status = encode_into(e, text, &out);
    if (status != 0) {
        PyMem_Free(out.data);
        if (status < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *list = PyList_New((Py_ssize_t)out.len);
    if (!list) { PyMem_Free(out.data); return NULL; }
    for (size_t k = 0; k < out.len; k++) {
        PyObject *v = PyLong_FromLong(out.data[k]);
        if (!v) { Py_DECREF(list); PyMem_Free(out.data); return NULL; }
        PyList_SET_ITEM(list, (Py_ssize_t)k, v);
    }
    PyMem_Free(out.data);
    return list;
}

static PyObject *Encoder_encode_bytes(Encoder *e, PyObject *args) {
    PyObject *text;
    int itemsize;
    if (!PyArg_ParseTuple(args, "Ui", &text, &itemsize)) return NULL;
    if (itemsize != 2 && itemsize != 4) { PyErr_SetString(PyExc_ValueError, "itemsize must be 2 or 4"); return NULL; }
    IntBuf out = {0};
    int status = encode_into(e, text, &out);
    if (status != 0) {
        PyMem_Free(out.data);
        if (status < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(out.len * itemsize));
    if (!res) { PyMem_Free(out.data); return NULL; }
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(res);
    for (size_t k = 0; k < out.len; k++) {
        uint32_t v = (uint32_t)out.data[k];
        if (itemsize == 2) {
            if (v > 0xFFFF) {
                Py_DECREF(res);
                PyMem_Free(out.data);
                PyErr_Format(PyExc_OverflowError, "id %u does not fit in 2 bytes", v);
                return NULL;
            }
            p[2 * k] = v & 0xFF; p[2 * k + 1] = v >> 8;
        } else {
            p[4 * k] = v & 0xFF; p[4 * k + 1] = (v >> 8) & 0xFF; p[4 * k + 2] = (v >> 16) & 0xFF; p[4 * k + 3] = v >> 24;
        }
    }
    PyMem_Free(out.data);
    return res;
}

static PyObject *Encoder_cached(Encoder *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSize_t(e->cache.count);
}

static int read_int(PyObject *o, int32_t *v) {
    long x = PyLong_AsLong(o);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (x < 0 || x > INT32_MAX - 1) { PyErr_SetString(PyExc_ValueError, "ids must be in [0, 2**31 - 1)"); return -1; }
    *v = (int32_t)x;
    return 0;
}

static int Encoder_init(Encoder *e, PyObject *args, PyObject *kwds) {
    PyObject *byte_ids, *pairs, *results, *classify, *long_bpe;
    Py_buffer classes;
    Py_ssize_t max_entries;
    if (!PyArg_ParseTuple(args, "OOOy*OOn", &byte_ids, &pairs, &results, &classes, &classify, &long_bpe,
                          &max_entries))
        return -1;
    int ok = -1;
    PyObject *bseq = NULL, *pseq = NULL, *rseq = NULL;
    if (classes.len != 65536) { PyErr_SetString(PyExc_ValueError, "classes must be 65536 bytes"); goto done; }
    memcpy(e->classes, classes.buf, 65536);
    bseq = PySequence_Fast(byte_ids, "byte_ids must be a sequence");
    pseq = PySequence_Fast(pairs, "merge_pairs must be a sequence");
    rseq = PySequence_Fast(results, "merge_result must be a sequence");
    if (!bseq || !pseq || !rseq) goto done;
    if (PySequence_Fast_GET_SIZE(bseq) != 256) { PyErr_SetString(PyExc_ValueError, "byte_ids must hold 256 ids"); goto done; }
    Py_ssize_t m = PySequence_Fast_GET_SIZE(pseq);
    if (PySequence_Fast_GET_SIZE(rseq) != m) { PyErr_SetString(PyExc_ValueError, "one result per merge"); goto done; }
    for (int b = 0; b < 256; b++)
        if (read_int(PySequence_Fast_GET_ITEM(bseq, b), &e->byte_ids[b]) < 0) goto done;
    size_t slots = 1024;
    while (slots < (size_t)m * 2) slots *= 2;
    PyMem_Free(e->pair_keys); PyMem_Free(e->pair_rank); PyMem_Free(e->merge_result);
    e->pair_keys = PyMem_Calloc(slots, sizeof(uint64_t));
    e->pair_rank = PyMem_Malloc(slots * sizeof(int32_t));
    e->merge_result = PyMem_Malloc((m ? m : 1) * sizeof(int32_t));
    if (!e->pair_keys || !e->pair_rank || !e->merge_result) { PyErr_NoMemory(); goto done; }
    e->pair_mask = slots - 1;
    e->num_merges = m;
    for (Py_ssize_t r = 0; r < m; r++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(pseq, r);
        int32_t a, b;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_ValueError, "each merge pair must be a tuple (left id, right id)");
            goto done;
        }
        if (read_int(PyTuple_GET_ITEM(pair, 0), &a) < 0 || read_int(PyTuple_GET_ITEM(pair, 1), &b) < 0) goto done;
        if (read_int(PySequence_Fast_GET_ITEM(rseq, r), &e->merge_result[r]) < 0) goto done;
        uint64_t key = pair_key(a, b);
        size_t i = pair_slot(key, e->pair_mask);
        while (e->pair_keys[i] && e->pair_keys[i] != key) i = (i + 1) & e->pair_mask;
        if (e->pair_keys[i] == 0) {  /* setdefault: the first (lowest) rank of a pair wins */
            e->pair_keys[i] = key;
            e->pair_rank[i] = (int32_t)r;
        }
    }
    Py_XSETREF(e->classify, Py_NewRef(classify));
    Py_XSETREF(e->long_bpe, Py_NewRef(long_bpe));
    e->max_entries = max_entries > 0 ? (size_t)max_entries : 1;
    cache_free(&e->cache);
    if (cache_init(&e->cache, 1 << 14) < 0) goto done;
    ok = 0;
done:
    PyBuffer_Release(&classes);
    Py_XDECREF(bseq); Py_XDECREF(pseq); Py_XDECREF(rseq);
    return ok;
}

/* long_bpe is usually a bound method of the Tokenizer that holds this encoder: a cycle the
   garbage collector must be able to see and break. */
static int Encoder_traverse(Encoder *e, visitproc visit, void *arg) {
    Py_VISIT(e->classify);
    Py_VISIT(e->long_bpe);
    return 0;
}

static int Encoder_clear(Encoder *e) {
    Py_CLEAR(e->classify);
    Py_CLEAR(e->long_bpe);
    return 0;
}

static void Encoder_dealloc(Encoder *e) {
    PyObject_GC_UnTrack(e);
    Encoder_clear(e);
    PyMem_Free(e->pair_keys);
    PyMem_Free(e->pair_rank);
    PyMem_Free(e->merge_result);
    PyMem_Free(e->astral);
    cache_free(&e->cache);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_O, "encode(text) -> list of ids, or None on a lone surrogate"},
    {"encode_bytes", (PyCFunction)Encoder_encode_bytes, METH_VARARGS,
     "encode_bytes(text, itemsize) -> ids as little-endian uint16/uint32 bytes, or None on a lone surrogate"},
    {"cached", (PyCFunction)Encoder_cached, METH_NOARGS, "number of distinct pre-tokens in the cache"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lm.tokenizer._encode_c.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Encoder_traverse,
    .tp_clear = (inquiry)Encoder_clear,
    .tp_doc = "GPT-2 pre-tokenization and BPE with a pre-token cache (see the module source).",
    .tp_methods = Encoder_methods,
    .tp_init = (initproc)Encoder_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_encode_c", "The compiled fast path of lm.tokenizer (optional).", -1, NULL,
};

PyMODINIT_FUNC PyInit__encode_c(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0) { Py_DECREF(m); return NULL; }
    if (PyModule_AddIntConstant(m, "LONG_PIECE", LONG_PIECE) < 0) { Py_DECREF(m); return NULL; }
    return m;
}

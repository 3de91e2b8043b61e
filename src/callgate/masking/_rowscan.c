/* The DataRow loop of callgate.masking.rows, for the common plans, in C.
 *
 * rewrite_run() does what RowRewriter._rewrite_run does, for plans whose columns are passed
 * through, masked by a column rule (a constant, style partial, or the style's own Python function
 * of the value), or searched by the email detector alone with a constant replacement (redact); a
 * value of another type under that detector passes unless flagged. Whenever it meets anything
 * else (a flagged value of another type, a flagged value that is not UTF-8, several flags in one
 * value, a malformed or very large row, a style function that fails), it gives up on the whole
 * run and returns None, having changed nothing: the Python loop then does the run and raises the
 * errors. So this file holds no error messages and no policy: only the same walk, faster.
 * tests/masking/test_rowscan.py checks it against the Python loop on random rows and plans.
 *
 * Returns b"" when the run is unchanged, else the whole new run; adds to ``counts`` (one int
 * per column) only when it does not give up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define OP_PASS 0
#define OP_CONSTANT 1
#define OP_WHOLE 2
#define OP_PARTIAL 3
#define OP_EMAIL 5
#define OP_FLAGGED 6
#define EMAIL_LOOKBACK 256

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int buf_put(Buf *b, const char *src, Py_ssize_t n) {
    if (n <= 0) {
        return 0;
    }
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap * 2;
        if (cap < b->len + n) {
            cap = b->len + n + 4096;
        }
        char *grown = PyMem_Realloc(b->data, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static int buf_i32(Buf *b, int32_t v) {
    char be[4];
    uint32_t u = (uint32_t)v;
    be[0] = (char)(u >> 24);
    be[1] = (char)(u >> 16);
    be[2] = (char)(u >> 8);
    be[3] = (char)u;
    return buf_put(b, be, 4);
}

/* Before the first change in a row (``*row_out`` < 0): everything up to the row goes into
 * ``out`` (made, the size of the run and some, with the first change of the run), and
 * ``*row_out`` is where the row's header will be in it. */
static int begin_row(Buf *out, const unsigned char *run, Py_ssize_t run_len, Py_ssize_t *copied,
                     Py_ssize_t pos, Py_ssize_t *row_out) {
    if (*row_out >= 0) {
        return 0;
    }
    if (out->data == NULL) {
        out->cap = run_len + 4096;
        out->data = PyMem_Malloc((size_t)out->cap);
        if (out->data == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    if (buf_put(out, (const char *)run + *copied, pos - *copied) < 0) {
        return -1;
    }
    *row_out = out->len;
    *copied = pos;
    return 0;
}

static int32_t read_i32(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

static int all_ascii(const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        if (p[k] & 0x80) {
            return 0;
        }
    }
    return 1;
}

typedef struct {
    Py_ssize_t *index;
    int *op;
    Py_ssize_t n;
} Walk;

/* (index, op) pairs from a tuple of 2-tuples; -1 with an exception set on error */
static int load_walk(PyObject *seq, Walk *w, Py_ssize_t ncols) {
    if (!PyTuple_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "walk must be a tuple");
        return -1;
    }
    w->n = PyTuple_GET_SIZE(seq);
    w->index = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(w->n + 1));
    w->op = PyMem_Malloc(sizeof(int) * (size_t)(w->n + 1));
    if (w->index == NULL || w->op == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < w->n; k++) {
        PyObject *pair = PyTuple_GET_ITEM(seq, k);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "walk items must be (index, op)");
            return -1;
        }
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 0));
        long op = PyLong_AsLong(PyTuple_GET_ITEM(pair, 1));
        if (PyErr_Occurred()) {
            return -1;
        }
        if (i < 0 || i >= ncols) {
            PyErr_SetString(PyExc_ValueError, "walk index out of range");
            return -1;
        }
        w->index[k] = i;
        w->op[k] = (int)op;
    }
    return 0;
}

static void free_walk(Walk *w) {
    PyMem_Free(w->index);
    PyMem_Free(w->op);
}

/* The email around the '@' at ``at`` (detectors.email_at on the translated run ``cls``):
 * 1 and the span, 0 for none, -1 on error. The domain's length comes from ``shapes`` (the
 * Python cache of domain shapes); when the shape is not there, ``email_at`` itself answers
 * (and fills the cache). ``classes`` is the translated run as a bytes object (made when
 * first needed, for that call). */
static int find_email(const unsigned char *cls, PyObject **classes, Py_ssize_t run_len,
                      Py_ssize_t start, Py_ssize_t end, Py_ssize_t at, PyObject *shapes,
                      PyObject *email_at, Py_ssize_t *first_out, Py_ssize_t *stop_out) {
    Py_ssize_t lo = at - EMAIL_LOOKBACK;
    if (lo < start) {
        lo = start;
    }
    Py_ssize_t first = lo;
    for (Py_ssize_t j = at - 1; j >= lo; j--) {
        if (cls[j] == 0) {
            first = j + 1;
            break;
        }
    }
    if (first >= at) {
        return 0;
    }
    for (Py_ssize_t j = at - 2; j >= first; j--) {
        if (cls[j] == 46 && cls[j + 1] == 46) {
            first = j + 2;
            break;
        }
    }
    while (first < at && cls[first] == 46) {
        first++;
    }
    if (first >= at) {
        return 0;
    }
    Py_ssize_t stop = end;
    for (Py_ssize_t j = at + 1; j < end; j++) {
        if (cls[j] == 0) {
            stop = j;
            break;
        }
    }
    PyObject *shape = PyBytes_FromStringAndSize((const char *)cls + at + 1, stop - at - 1);
    if (shape == NULL) {
        return -1;
    }
    PyObject *known = PyDict_GetItemWithError(shapes, shape); /* borrowed */
    Py_DECREF(shape);
    if (known != NULL) {
        Py_ssize_t length = PyLong_AsSsize_t(known);
        if (length == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (length <= 0) {
            return 0;
        }
        *first_out = first;
        *stop_out = at + 1 + length;
        return 1;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    if (*classes == NULL) {
        *classes = PyBytes_FromStringAndSize((const char *)cls, run_len);
        if (*classes == NULL) {
            return -1;
        }
    }
    PyObject *span = PyObject_CallFunction(email_at, "Onnn", *classes, start, end, at);
    if (span == NULL) {
        return -1;
    }
    if (span == Py_None) {
        Py_DECREF(span);
        return 0;
    }
    if (!PyArg_ParseTuple(span, "nn", first_out, stop_out)) {
        Py_DECREF(span);
        return -1;
    }
    Py_DECREF(span);
    if (*first_out < start || *stop_out > end || *first_out >= *stop_out) {
        PyErr_SetString(PyExc_ValueError, "email_at returned a span outside the value");
        return -1;
    }
    return 1;
}

static PyObject *rewrite_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "rewrite_run takes 15 arguments");
        return NULL;
    }
    PyObject *run_obj = args[0], *ends = args[1], *at = args[2], *walk_flagged = args[3],
             *walk_static = args[4], *count_obj = args[5], *constant = args[6],
             *keep = args[7], *email_hit = args[8], *table_obj = args[9],
             *email_at = args[10], *shapes = args[11], *counts = args[12];
    /* values (and rows) this long or longer are the Python loop's (rows._LARGE) */
    Py_ssize_t LARGE = PyLong_AsSsize_t(args[13]);
    /* per column: the masked field as a function of the value's bytes (rows._function) */
    PyObject *function = args[14];
    if (LARGE == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyBytes_Check(run_obj) || !PyList_Check(ends) || !PyList_Check(at) ||
        !PyBytes_Check(count_obj) || PyBytes_GET_SIZE(count_obj) != 2 ||
        !PyTuple_Check(constant) || !PyTuple_Check(keep) || !PyTuple_Check(function) ||
        (email_hit != Py_None && !PyBytes_Check(email_hit)) || !PyBytes_Check(table_obj) ||
        PyBytes_GET_SIZE(table_obj) != 256 || !PyDict_Check(shapes) || !PyList_Check(counts)) {
        PyErr_SetString(PyExc_TypeError, "rewrite_run: bad argument types");
        return NULL;
    }
    const unsigned char *run = (const unsigned char *)PyBytes_AS_STRING(run_obj);
    Py_ssize_t run_len = PyBytes_GET_SIZE(run_obj);
    const unsigned char *count = (const unsigned char *)PyBytes_AS_STRING(count_obj);
    const unsigned char *table = (const unsigned char *)PyBytes_AS_STRING(table_obj);
    Py_ssize_t ncols = PyList_GET_SIZE(counts);
    if (PyTuple_GET_SIZE(constant) != ncols || PyTuple_GET_SIZE(keep) != ncols ||
        PyTuple_GET_SIZE(function) != ncols) {
        PyErr_SetString(PyExc_ValueError, "rewrite_run: one constant and keep per column");
        return NULL;
    }
    Py_ssize_t nflags = PyList_GET_SIZE(at);
    if (nflags < 1) {
        PyErr_SetString(PyExc_ValueError, "rewrite_run: the flags end with a sentinel");
        return NULL;
    }

    PyObject *result = NULL;
    PyObject *classes = NULL;
    unsigned char *cls = NULL;
    Py_ssize_t *added = PyMem_Calloc((size_t)ncols + 1, sizeof(Py_ssize_t));
    PyObject **sums = NULL;
    PyObject *made = NULL; /* a new field made by a Python function, while it is copied */
    Walk wf = {NULL, NULL, 0}, ws = {NULL, NULL, 0};
    Buf out = {NULL, 0, 0};
    if (added == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (load_walk(walk_flagged, &wf, ncols) < 0 || load_walk(walk_static, &ws, ncols) < 0) {
        goto done;
    }
    const char *hit = NULL;
    Py_ssize_t hit_len = 0;
    if (email_hit != Py_None) {
        hit = PyBytes_AS_STRING(email_hit);
        hit_len = PyBytes_GET_SIZE(email_hit);
    }

#define FLAG(k) PyLong_AsSsize_t(PyList_GET_ITEM(at, (k)))
#define BAIL()                                                                                 \
    do {                                                                                       \
        Py_INCREF(Py_None);                                                                    \
        result = Py_None;                                                                      \
        goto done;                                                                             \
    } while (0)
#define ADVANCE()                                                                              \
    do {                                                                                       \
        fi++;                                                                                  \
        if (fi >= nflags) BAIL();                                                              \
        nxt = FLAG(fi);                                                                        \
        if (nxt == -1 && PyErr_Occurred()) goto done;                                          \
    } while (0)

    Py_ssize_t fi = 0;
    Py_ssize_t nxt = FLAG(0);
    if (nxt == -1 && PyErr_Occurred()) {
        goto done;
    }
    Py_ssize_t copied = 0; /* run[0:copied] is in ``out`` (when anything changed) */
    Py_ssize_t pos = 0;
    Py_ssize_t nrows = PyList_GET_SIZE(ends);
    for (Py_ssize_t r = 0; r < nrows; r++) {
        Py_ssize_t end = PyLong_AsSsize_t(PyList_GET_ITEM(ends, r));
        if (end == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (end <= pos || end > run_len) {
            PyErr_SetString(PyExc_ValueError, "rewrite_run: row ends out of order");
            goto done;
        }
        Walk *walk;
        if (end - pos > LARGE) {
            BAIL();
        }
        if (nxt < end) {
            walk = &wf;
        } else if (ws.n) {
            walk = &ws;
        } else {
            pos = end;
            continue;
        }
        if (end - pos < 7 || run[pos + 5] != count[0] || run[pos + 6] != count[1]) {
            BAIL();
        }
        Py_ssize_t p = pos + 7;
        Py_ssize_t row_out = -1; /* where this row's header is in ``out`` */
        Py_ssize_t delta = 0;
        for (Py_ssize_t k = 0; k < walk->n; k++) {
            Py_ssize_t i = walk->index[k];
            int op = walk->op[k];
            if (p + 4 > end) {
                BAIL();
            }
            Py_ssize_t length = read_i32(run + p);
            if (length < 0) {
                if (length != -1) {
                    BAIL();
                }
                p += 4;
                continue;
            }
            if (op == OP_PASS) {
                p += 4 + length;
                continue;
            }
            if (length >= LARGE) {
                BAIL(); /* scanned whatever the flags: the Python loop's business */
            }
            Py_ssize_t vend = p + 4 + length;
            if (op > 4 && nxt >= vend && length < LARGE) {
                p = vend;
                continue;
            }
            if (vend > end) {
                BAIL();
            }
            Py_ssize_t start = p + 4;
            /* the new field replaces run[p:vend]: a constant, a function's, or stars and the tail */
            const char *new_head = NULL;
            Py_ssize_t new_head_len = 0;
            Py_ssize_t tail_from = vend; /* run[tail_from:vend] follows the new head */
            char partial_head[4];
            Py_ssize_t stars = 0;
            int inline_partial = 0; /* stars and the kept tail, written here */
            if (op == OP_CONSTANT) {
                PyObject *c = PyTuple_GET_ITEM(constant, i);
                if (!PyBytes_Check(c)) {
                    PyErr_SetString(PyExc_TypeError, "rewrite_run: constants are bytes");
                    goto done;
                }
                new_head = PyBytes_AS_STRING(c);
                new_head_len = PyBytes_GET_SIZE(c);
            } else if (op == OP_WHOLE || (op == OP_PARTIAL && !all_ascii(run + start, length))) {
                /* the style's own function (partial by characters when not ASCII); an error
                 * is the Python loop's to raise */
                made = PyObject_CallFunction(PyTuple_GET_ITEM(function, i), "y#",
                                             (const char *)run + start, length);
                if (made == NULL || !PyBytes_Check(made)) {
                    PyErr_Clear();
                    BAIL();
                }
                new_head = PyBytes_AS_STRING(made);
                new_head_len = PyBytes_GET_SIZE(made);
            } else if (op == OP_PARTIAL) {
                inline_partial = 1;
                int overflow = 0;
                long long kept =
                    PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(keep, i), &overflow);
                if (overflow) {
                    kept = overflow > 0 ? LLONG_MAX : 0; /* keep is only compared with n/2 */
                } else if (kept == -1 && PyErr_Occurred()) {
                    goto done;
                }
                Py_ssize_t visible = kept < length / 2 ? (Py_ssize_t)kept : length / 2;
                if (visible < 0) {
                    visible = 0;
                }
                stars = visible == 0 ? (length > 4 ? length : 4) : length - visible;
                if (stars + visible > INT32_MAX) {
                    BAIL();
                }
                uint32_t u = (uint32_t)(stars + visible);
                partial_head[0] = (char)(u >> 24);
                partial_head[1] = (char)(u >> 16);
                partial_head[2] = (char)(u >> 8);
                partial_head[3] = (char)u;
                new_head = partial_head;
                new_head_len = 4;
                tail_from = vend - visible;
            } else if (op == OP_EMAIL) {
                while (nxt < p) {
                    ADVANCE();
                }
                if (nxt >= vend) {
                    p = vend; /* no flag in this value */
                    continue;
                }
                Py_ssize_t flag = nxt;
                ADVANCE();
                if (nxt < vend || hit == NULL) {
                    BAIL();
                }
                if (!all_ascii(run + start, length)) {
                    /* a flagged value must be UTF-8 (the Python loop raises if not) */
                    PyObject *text =
                        PyUnicode_DecodeUTF8((const char *)run + start, length, "strict");
                    if (text == NULL) {
                        PyErr_Clear();
                        BAIL();
                    }
                    Py_DECREF(text);
                }
                if (cls == NULL) {
                    cls = PyMem_Malloc((size_t)run_len + 1);
                    if (cls == NULL) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    for (Py_ssize_t j = 0; j < run_len; j++) {
                        cls[j] = table[run[j]];
                    }
                }
                Py_ssize_t first, stop;
                int found = find_email(cls, &classes, run_len, start, vend, flag, shapes,
                                       email_at, &first, &stop);
                if (found < 0) {
                    goto done;
                }
                if (found == 0) {
                    p = vend;
                    continue;
                }
                /* pieces: the new length, the value up to the email, the replacement; the
                 * rest of the value follows from run[stop:] */
                if (begin_row(&out, run, run_len, &copied, pos, &row_out) < 0) {
                    goto done;
                }
                Py_ssize_t new_len = length - (stop - first) + hit_len;
                if (new_len > INT32_MAX ||
                    buf_put(&out, (const char *)run + copied, p - copied) < 0 ||
                    buf_i32(&out, (int32_t)new_len) < 0 ||
                    buf_put(&out, (const char *)run + start, first - start) < 0 ||
                    buf_put(&out, hit, hit_len) < 0) {
                    if (!PyErr_Occurred()) {
                        BAIL();
                    }
                    goto done;
                }
                copied = stop;
                delta += hit_len - (stop - first);
                added[i]++;
                p = vend;
                continue;
            } else if (op == OP_FLAGGED) {
                /* a non-text value under the email detector alone: passed unless flagged */
                while (nxt < p) {
                    ADVANCE();
                }
                if (nxt >= vend) {
                    p = vend;
                    continue;
                }
                BAIL();
            } else {
                BAIL(); /* a function of the value, several detectors */
            }
            if (begin_row(&out, run, run_len, &copied, pos, &row_out) < 0) {
                goto done;
            }
            if (buf_put(&out, (const char *)run + copied, p - copied) < 0 ||
                buf_put(&out, new_head, new_head_len) < 0) {
                goto done;
            }
            if (inline_partial) {
                char star_block[64];
                memset(star_block, '*', sizeof star_block);
                for (Py_ssize_t left = stars; left > 0; left -= 64) {
                    if (buf_put(&out, star_block, left < 64 ? left : 64) < 0) {
                        goto done;
                    }
                }
                if (buf_put(&out, (const char *)run + tail_from, vend - tail_from) < 0) {
                    goto done;
                }
                delta += 4 + stars + (vend - tail_from) - (vend - p);
            } else {
                delta += new_head_len - (vend - p);
            }
            Py_CLEAR(made);
            copied = vend;
            added[i]++;
            p = vend;
        }
        if (p > end) {
            BAIL();
        }
        if (row_out >= 0) {
            Py_ssize_t row_len = end - pos - 1 + delta;
            if (row_len > INT32_MAX || row_len < 4) {
                BAIL();
            }
            uint32_t u = (uint32_t)row_len;
            out.data[row_out + 1] = (char)(u >> 24);
            out.data[row_out + 2] = (char)(u >> 16);
            out.data[row_out + 3] = (char)(u >> 8);
            out.data[row_out + 4] = (char)u;
        }
        while (nxt < end) {
            ADVANCE();
        }
        pos = end;
    }
    if (out.data == NULL) { /* nothing changed */
        result = PyBytes_FromStringAndSize("", 0);
        goto add_counts;
    }
    if (buf_put(&out, (const char *)run + copied, run_len - copied) < 0) {
        goto done;
    }
    result = PyBytes_FromStringAndSize(out.data, out.len);
    if (result == NULL) {
        goto done;
    }
add_counts:
    if (result == NULL) {
        goto done;
    }
    if (PyList_GET_SIZE(counts) != ncols) {
        PyErr_SetString(PyExc_RuntimeError, "rewrite_run: counts changed size");
        Py_CLEAR(result);
        goto done;
    }
    /* every new count first, then all of them in place: none or all are updated */
    sums = PyMem_Calloc((size_t)ncols + 1, sizeof(PyObject *));
    if (sums == NULL) {
        PyErr_NoMemory();
        Py_CLEAR(result);
        goto done;
    }
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (!added[i]) {
            continue;
        }
        PyObject *inc = PyLong_FromSsize_t(added[i]);
        sums[i] = inc == NULL ? NULL : PyNumber_Add(PyList_GET_ITEM(counts, i), inc);
        Py_XDECREF(inc);
        if (sums[i] == NULL) {
            for (Py_ssize_t j = 0; j < i; j++) {
                Py_XDECREF(sums[j]);
            }
            Py_CLEAR(result);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (sums[i] != NULL) {
            PyObject *old = PyList_GET_ITEM(counts, i);
            PyList_SET_ITEM(counts, i, sums[i]); /* steals the new count */
            Py_DECREF(old);
        }
    }
done:
#undef FLAG
#undef BAIL
#undef ADVANCE
    Py_XDECREF(made);
    PyMem_Free(added);
    PyMem_Free(sums);
    PyMem_Free(cls);
    PyMem_Free(out.data);
    free_walk(&wf);
    free_walk(&ws);
    Py_XDECREF(classes);
    return result;
}

static PyMethodDef methods[] = {
    {"rewrite_run", (PyCFunction)(void (*)(void))rewrite_run, METH_FASTCALL,
     "The DataRow loop of RowRewriter._rewrite_run for the common plans; None: not handled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rowscan",
    .m_doc = "The DataRow masking loop in C (see rows.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__rowscan(void) { return PyModule_Create(&module); }

/* The worker's native recogniser of plain metric entries (see wholeentry.py).
 *
 * scan(raw) answers (resourceGroup or None, executionId, run, count) for a stream entry that
 * needs no judgement and no rewriting: an object holding executionId, optionally resourceGroup,
 * and a non-empty metrics array whose every item has a valid name, a finite number, a canonical
 * UTC timestamp (YYYY-MM-DDTHH:MM:SS.ffffffZ, a real date), optionally a step in 0..2^63-1 and
 * 1..20 labels — every string printable ASCII without escapes. It answers None for anything
 * else (tags, customInfo, nulls, escapes, non-ASCII text, an unknown or repeated key, any doubt),
 * and the entry then takes the msgspec and pydantic paths, which judge it. So this code never
 * refuses an entry, it only recognises the common ones in one pass over the bytes, without a
 * Python object per point. tests/test_entryscan.py holds it to what codec.py would give.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define MAX_NAME_CHARS 256
#define MAX_LABELS 20

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Cursor;

typedef struct {
    const unsigned char *s;
    Py_ssize_t n;
} Text;

static inline void skip_ws(Cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

static inline int take(Cursor *c, unsigned char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static inline int is_digit(unsigned char b) { return b >= '0' && b <= '9'; }

/* A string of printable ASCII with no escape: its content, without the quotes. */
static int plain_string(Cursor *c, Text *out)
{
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"')
        return 0;
    const unsigned char *q = ++c->p;
    for (; q < c->end; q++) {
        unsigned char b = *q;
        if (b == '"')
            break;
        if (b < 0x20 || b >= 0x7f || b == '\\')
            return 0;
    }
    if (q >= c->end)
        return 0;
    out->s = c->p;
    out->n = q - c->p;
    c->p = q + 1;
    return 1;
}

static inline int is_key(const Text *t, const char *name, Py_ssize_t n)
{
    return t->n == n && memcmp(t->s, name, (size_t)n) == 0;
}
#define KEY(t, literal) is_key((t), (literal), (Py_ssize_t)(sizeof(literal) - 1))

/* The key of the next member and the colon right after it: a run's points are counted by their
 * '"timestamp":' (wholeentry.point_count), so no space may part a key from its colon. */
static inline int member_key(Cursor *c, Text *key)
{
    if (!plain_string(c, key) || c->p >= c->end || *c->p != ':')
        return 0;
    c->p++;
    return 1;
}

/* After a member: 1 at ',' (another follows), 2 at the closing brace, 0 on anything else. */
static inline int next_member(Cursor *c, unsigned char close)
{
    skip_ws(c);
    if (c->p < c->end) {
        if (*c->p == ',') {
            c->p++;
            return 1;
        }
        if (*c->p == close) {
            c->p++;
            return 2;
        }
    }
    return 0;
}

static inline int name_ok(const Text *t) { return t->n >= 1 && t->n <= MAX_NAME_CHARS; }

static int metric_name_ok(const Text *t)
{
    if (!name_ok(t))
        return 0;
    for (Py_ssize_t i = 0; i < t->n; i++) {  /* the pattern searches: one such char will do */
        unsigned char b = t->s[i];
        if (is_digit(b) || (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || b == '_' || b == '-')
            return 1;
    }
    return 0;
}

/* The end of a JSON number's integer part starting at q (no sign): "0" or a digit run not
 * starting with 0; NULL when there is none. */
static const unsigned char *integer_part(const unsigned char *q, const unsigned char *end)
{
    if (q < end && *q == '0')
        return q + 1;
    if (q >= end || *q < '1' || *q > '9')
        return NULL;
    while (q < end && is_digit(*q))
        q++;
    return q;
}

/* A JSON number that is a finite double. */
static int finite_number(Cursor *c)
{
    skip_ws(c);
    const unsigned char *start = c->p, *q = c->p, *end = c->end;
    int exponent = 0;
    if (q < end && *q == '-')
        q++;
    const unsigned char *integer = q;
    if ((q = integer_part(q, end)) == NULL)
        return 0;
    Py_ssize_t integer_digits = q - integer;
    if (q < end && *q == '.') {
        q++;
        if (q >= end || !is_digit(*q))
            return 0;
        while (q < end && is_digit(*q))
            q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        exponent = 1;
        q++;
        if (q < end && (*q == '+' || *q == '-'))
            q++;
        if (q >= end || !is_digit(*q))
            return 0;
        while (q < end && is_digit(*q))
            q++;
    }
    c->p = q;
    if (!exponent && integer_digits <= 300)
        return 1; /* below 1e301: finite whatever the fraction */
    /* Rare: let Python's own conversion say whether it overflows. The text is copied so that
     * the conversion cannot read past this number. */
    Py_ssize_t n = q - start;
    if (n > 1000)
        return 0;
    char buffer[1001];
    memcpy(buffer, start, (size_t)n);
    buffer[n] = '\0';
    char *stop = NULL;
    double value = PyOS_string_to_double(buffer, &stop, NULL);
    if (value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return stop == buffer + n && isfinite(value);
}

/* A JSON integer in 0 .. 2^63-1 (a fraction or an exponent makes it a float: not a step). */
static int step_number(Cursor *c)
{
    static const char largest[] = "9223372036854775807";
    skip_ws(c);
    const unsigned char *start = c->p, *end = c->end, *q = integer_part(start, end);
    if (q == NULL)
        return 0;
    if (q < end && (*q == '.' || *q == 'e' || *q == 'E'))
        return 0;
    Py_ssize_t n = q - start;
    if (n > 19 || (n == 19 && memcmp(start, largest, 19) > 0))
        return 0;
    c->p = q;
    return 1;
}

static inline int two(const unsigned char *s) { return (s[0] - '0') * 10 + (s[1] - '0'); }

/* YYYY-MM-DDTHH:MM:SS.ffffffZ naming a real instant in years 0001..9999. */
static int canonical_timestamp(const Text *t)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (t->n != (Py_ssize_t)(sizeof(shape) - 1))
        return 0;
    const unsigned char *s = t->s;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        if (shape[i] == 'd' ? !is_digit(s[i]) : s[i] != (unsigned char)shape[i])
            return 0;
    }
    int year = two(s) * 100 + two(s + 2), month = two(s + 5), day = two(s + 8);
    if (year < 1 || month < 1 || month > 12 || day < 1)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > days[month - 1] + (month == 2 && leap))
        return 0;
    return two(s + 11) <= 23 && two(s + 14) <= 59 && two(s + 17) <= 59;
}

/* {"name": ..., "value": ...}: both once, nothing else. */
static int label(Cursor *c)
{
    Text key, text;
    int seen = 0;
    if (!take(c, '{'))
        return 0;
    for (;;) {
        if (!member_key(c, &key) || !plain_string(c, &text) || !name_ok(&text))
            return 0;
        int bit = KEY(&key, "name") ? 1 : KEY(&key, "value") ? 2 : 0;
        if (!bit || (seen & bit))
            return 0;
        seen |= bit;
        int more = next_member(c, '}');
        if (more == 2)
            return seen == 3;
        if (more != 1)
            return 0;
    }
}

static int labels(Cursor *c)
{
    if (!take(c, '['))
        return 0;
    for (int count = 1; count <= MAX_LABELS; count++) {
        if (!label(c))
            return 0;
        int more = next_member(c, ']');
        if (more == 2)
            return 1;
        if (more != 1)
            return 0;
    }
    return 0; /* more than MAX_LABELS */
}

enum { NAME = 1, VALUE = 2, TIMESTAMP = 4, STEP = 8, LABELS = 16 };

static int metric(Cursor *c)
{
    Text key, text;
    int seen = 0;
    if (!take(c, '{'))
        return 0;
    for (;;) {
        if (!member_key(c, &key))
            return 0;
        int bit, ok;
        if (KEY(&key, "name")) {
            bit = NAME;
            ok = plain_string(c, &text) && metric_name_ok(&text);
        } else if (KEY(&key, "value")) {
            bit = VALUE;
            ok = finite_number(c);
        } else if (KEY(&key, "timestamp")) {
            bit = TIMESTAMP;
            ok = plain_string(c, &text) && canonical_timestamp(&text);
        } else if (KEY(&key, "step")) {
            bit = STEP;
            ok = step_number(c);
        } else if (KEY(&key, "labels")) {
            bit = LABELS;
            ok = labels(c);
        } else {
            return 0;
        }
        if (!ok || (seen & bit))
            return 0;
        seen |= bit;
        int more = next_member(c, '}');
        if (more == 2)
            return (seen & (NAME | VALUE | TIMESTAMP)) == (NAME | VALUE | TIMESTAMP);
        if (more != 1)
            return 0;
    }
}

static int execution_id_ok(const Text *t)
{
    if (t->n < 4 || t->n > 64)
        return 0;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        unsigned char b = t->s[i];
        if (!(is_digit(b) || (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || b == '_' ||
              b == '.' || b == '-'))
            return 0;
    }
    return 1;
}

/* plain_string admits printable ASCII (0x20..0x7e); a resource group has no space. */
static int resource_group_ok(const Text *t)
{
    if (t->n < 1 || t->n > 253)
        return 0;
    return memchr(t->s, ' ', (size_t)t->n) == NULL;
}

static PyObject *scan(PyObject *module, PyObject *raw)
{
    (void)module;
    if (!PyBytes_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "scan() takes bytes");
        return NULL;
    }
    Cursor c = {(const unsigned char *)PyBytes_AS_STRING(raw), NULL};
    c.end = c.p + PyBytes_GET_SIZE(raw);
    Text key, execution = {NULL, 0}, group = {NULL, 0};
    const unsigned char *run = NULL, *run_end = NULL;
    Py_ssize_t count = 0;
    enum { EXECUTION = 1, GROUP = 2, METRICS = 4 };
    int seen = 0;
    if (!take(&c, '{'))
        Py_RETURN_NONE;
    for (;;) {
        if (!member_key(&c, &key))
            Py_RETURN_NONE;
        int bit;
        if (KEY(&key, "executionId")) {
            bit = EXECUTION;
            if (!plain_string(&c, &execution) || !execution_id_ok(&execution))
                Py_RETURN_NONE;
        } else if (KEY(&key, "resourceGroup")) {
            bit = GROUP;
            if (!plain_string(&c, &group) || !resource_group_ok(&group))
                Py_RETURN_NONE;
        } else if (KEY(&key, "metrics")) {
            bit = METRICS;
            if (!take(&c, '['))
                Py_RETURN_NONE;
            run = c.p;
            for (;;) {
                if (!metric(&c))
                    Py_RETURN_NONE;
                count++;
                int more = next_member(&c, ']');
                if (more == 2)
                    break;
                if (more != 1)
                    Py_RETURN_NONE;
            }
            run_end = c.p - 1; /* the closing bracket */
        } else {
            Py_RETURN_NONE; /* tags, customInfo or a key the API does not know */
        }
        if (seen & bit)
            Py_RETURN_NONE;
        seen |= bit;
        int more = next_member(&c, '}');
        if (more == 2)
            break;
        if (more != 1)
            Py_RETURN_NONE;
    }
    skip_ws(&c);
    if (c.p != c.end || (seen & (EXECUTION | METRICS)) != (EXECUTION | METRICS))
        Py_RETURN_NONE;
    PyObject *group_obj;
    if (seen & GROUP) {
        group_obj = PyUnicode_DecodeASCII((const char *)group.s, group.n, NULL);
        if (group_obj == NULL)
            return NULL;
    } else {
        group_obj = Py_NewRef(Py_None);
    }
    return Py_BuildValue(
        "(Ns#y#n)",
        group_obj,
        (const char *)execution.s,
        execution.n,
        (const char *)run,
        (Py_ssize_t)(run_end - run),
        count);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O,
     "scan(raw) -> (resourceGroup | None, executionId, run, count) | None: a plain metrics entry "
     "recognised in one pass, or None when it needs the full judgement."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_entryscan", "The worker's native recogniser of plain metric entries.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__entryscan(void) { return PyModule_Create(&module); }

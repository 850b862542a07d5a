/* vism-guest: command line, scripts and output. See README.md for the commands and exit codes. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <unistd.h>

#include "vism-guest.h"

static void usage(FILE *f)
{
    fputs("usage: vism-guest [options] <command> [args] [-- <command> [args]]...\n"
          "       vism-guest [options] run <script|->\n"
          "Drives a virtio-ism device from user space (root; takes the device from virtio-pci).\n"
          "All commands of one invocation share one started device; it is reset on exit.\n"
          "\n"
          "options (before the first command):\n"
          "  --id N          virtio device id (default: 44, then 45)\n"
          "  --pci ADDR      use this PCI function, e.g. 0000:00:03.0\n"
          "  --timeout S     seconds a control request may take (default 30)\n"
          "  -D NAME=VALUE   define a script variable ($NAME)\n"
          "  -v, --verbose   log device set-up steps to stderr\n"
          "\n"
          "commands:\n"
          "  info                         device identity, windows and features\n"
          "  alloc SIZE [as NAME]         allocate a region: prints token and offset\n"
          "  attach TOKEN [as NAME]       attach a peer's region: prints its offset\n"
          "  detach OFFSET                release this device's reference to a region\n"
          "  grant OFFSET PEER PERMS      set permissions (PEER 0 = default entry);\n"
          "                               PERMS a number or read,write,attach,manage,deny-other\n"
          "  write OFFSET TEXT            store TEXT and a NUL byte in a region\n"
          "  read OFFSET LEN              print LEN bytes (as text, up to the first NUL)\n"
          "  notify [--timeout S] OFFSET  signal the other devices referencing the region; wait up\n"
          "                               to S s (default 1) for the device to take the slot\n"
          "  wait [--timeout S]           print the next eventq event (default timeout 30 s)\n"
          "  poll [--timeout S] OFFSET TEXT  wait until the region holds TEXT at OFFSET\n"
          "  channel send [--peer DEVID] [--timeout S] FILE\n"
          "                               create a vism channel (for devid DEVID only), print its\n"
          "                               token, stream FILE to the peer that joins, print sha256\n"
          "  channel recv [--timeout S] TOKEN FILE\n"
          "                               join the channel TOKEN, write what arrives to FILE\n"
          "  echo TEXT | sleep S          print TEXT | pause S seconds\n"
          "  pause [--timeout S]          hold the device until a line on stdin (or S seconds)\n"
          "  expect-refused COMMAND...    succeed only if the device answers COMMAND with ERR\n"
          "\n"
          "Numbers: 4096, 0x1000, 4K, 1M, $var, $var+2048. alloc sets $token, $offset (and\n"
          "$NAME.token, $NAME.offset); attach sets $offset; info sets $devid, $gid; wait sets $event.\n"
          "exit codes: 0 ok, 1 usage, 2 no device, 3 device unusable, 4 ERR ack, 5 nothing in time (wait, poll),\n"
          "  6 device did not answer or needs reset, 7 guest resource (huge page, pagemap, sysfs),\n"
          "  8 interrupted, 9 expect-refused command succeeded\n",
          f);
}

#define EXIT_UNEXPECTED 9

/* ---- variables ---- */

struct var {
    char name[64];
    char value[128];
};
static struct var g_vars[128];
static int g_nvars;

static int set_var(const char *name, const char *value)
{
    if (strlen(name) >= sizeof g_vars[0].name || strlen(value) >= sizeof g_vars[0].value) {
        errorf("variable %s: name or value too long", name);
        return EXIT_USAGE;
    }
    for (int i = 0; i < g_nvars; i++) {
        if (strcmp(g_vars[i].name, name) == 0) {
            snprintf(g_vars[i].value, sizeof g_vars[i].value, "%s", value);
            return EXIT_OK;
        }
    }
    if (g_nvars == (int)(sizeof g_vars / sizeof g_vars[0])) {
        errorf("too many variables");
        return EXIT_USAGE;
    }
    snprintf(g_vars[g_nvars].name, sizeof g_vars[0].name, "%s", name);
    snprintf(g_vars[g_nvars].value, sizeof g_vars[0].value, "%s", value);
    g_nvars++;
    return EXIT_OK;
}

static void set_var_hex(const char *prefix, const char *name, uint64_t value)
{
    char full[64], text[32];
    snprintf(full, sizeof full, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", name);
    snprintf(text, sizeof text, "0x%llx", (unsigned long long)value);
    set_var(full, text);
}

static int is_name_char(char c) { return isalnum((unsigned char)c) || c == '_' || c == '.'; }

/* Replaces $name and ${name} in `in`; returns EXIT_OK or EXIT_USAGE for an unknown variable. */
static int expand(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (const char *p = in; *p;) {
        const char *value = NULL;
        char name[64];
        if (p[0] == '$' && (p[1] == '{' || is_name_char(p[1]))) {
            int braced = p[1] == '{';
            const char *s = p + 1 + braced, *e = s;
            while (is_name_char(*e))
                e++;
            /* A trailing '.' ends a sentence, not a name. */
            while (!braced && e > s && e[-1] == '.')
                e--;
            if ((braced && *e != '}') || e == s || (size_t)(e - s) >= sizeof name) {
                errorf("bad variable reference in '%s'", in);
                return EXIT_USAGE;
            }
            memcpy(name, s, (size_t)(e - s));
            name[e - s] = 0;
            for (int i = 0; i < g_nvars && !value; i++)
                if (strcmp(g_vars[i].name, name) == 0)
                    value = g_vars[i].value;
            if (!value) {
                errorf("unknown variable $%s", name);
                return EXIT_USAGE;
            }
            p = e + braced;
        }
        size_t n = value ? strlen(value) : 1;
        if (o + n >= cap) {
            errorf("line too long after expanding variables");
            return EXIT_USAGE;
        }
        if (value) {
            memcpy(out + o, value, n);
        } else {
            out[o] = *p++;
        }
        o += n;
    }
    out[o] = 0;
    return EXIT_OK;
}

/* A number: decimal, 0x hex, with K/M/G (binary) suffixes, and terms joined by '+'. */
static int parse_number(const char *what, const char *text, uint64_t *out)
{
    uint64_t total = 0;
    const char *p = text;
    for (;;) {
        char *end;
        errno = 0;
        if (!isdigit((unsigned char)*p))
            goto bad;
        uint64_t v = strtoull(p, &end, 0);
        if (errno || end == p)
            goto bad;
        uint64_t mult = 1;
        if (*end && *end != '+') {
            char c = (char)toupper((unsigned char)*end);
            mult = c == 'K' ? 1ULL << 10 : c == 'M' ? 1ULL << 20 : c == 'G' ? 1ULL << 30 : 0;
            if (!mult)
                goto bad;
            end++;
            if (strncasecmp(end, "iB", 2) == 0)
                end += 2;
            else if (toupper((unsigned char)*end) == 'B')
                end++;
        }
        if (v > UINT64_MAX / mult || v * mult > UINT64_MAX - total)
            goto bad;
        total += v * mult;
        if (*end == 0)
            break;
        if (*end != '+')
            goto bad;
        p = end + 1;
    }
    *out = total;
    return EXIT_OK;
bad:
    errorf("%s: '%s' is not a number (e.g. 4096, 0x1000, 4K, $offset+2048)", what, text);
    return EXIT_USAGE;
}

static int parse_seconds(const char *what, const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || v < 0 || v > 86400 * 365) {
        errorf("%s: '%s' is not a number of seconds", what, text);
        return EXIT_USAGE;
    }
    *out = v;
    return EXIT_OK;
}

static int parse_perms(const char *text, uint64_t *out)
{
    if (isdigit((unsigned char)text[0]))
        return parse_number("grant", text, out);
    static const struct { const char *name, *alias; uint64_t bit; } names[] = {
        {"read", "r", VIRTIO_ISM_PERM_READ},       {"write", "w", VIRTIO_ISM_PERM_WRITE},
        {"attach", "a", VIRTIO_ISM_PERM_ATTACH},   {"manage", "m", VIRTIO_ISM_PERM_MANAGE},
        {"deny-other", "d", VIRTIO_ISM_PERM_DENY_OTHER}, {"none", "-", 0},
    };
    uint64_t perms = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *tok = strtok_r(buf, ",|+", &save); tok; tok = strtok_r(NULL, ",|+", &save)) {
        size_t i = 0;
        while (i < sizeof names / sizeof names[0] && strcasecmp(tok, names[i].name) && strcasecmp(tok, names[i].alias))
            i++;
        if (i == sizeof names / sizeof names[0]) {
            errorf("grant: unknown permission '%s' (read, write, attach, manage, deny-other, none)", tok);
            return EXIT_USAGE;
        }
        perms |= names[i].bit;
    }
    *out = perms;
    return EXIT_OK;
}

/* ---- commands ---- */

struct ctx {
    struct ism m;
    int opened;
    uint32_t id;
    const char *pci;
    double timeout;
};

static int need_device(struct ctx *c)
{
    if (c->opened)
        return EXIT_OK;
    int rc = ism_open(&c->m, c->id, c->pci, c->timeout);
    if (rc == EXIT_OK) {
        c->opened = 1;
        set_var_hex(NULL, "devid", c->m.devid);
        set_var_hex(NULL, "gid", c->m.gid);
    }
    return rc;
}

static void print_text(const uint8_t *data, size_t len)
{
    putchar('"');
    for (size_t i = 0; i < len && data[i]; i++) {
        uint8_t b = data[i];
        if (b == '"' || b == '\\')
            printf("\\%c", b);
        else if (b >= 0x20 && b < 0x7f)
            putchar(b);
        else
            printf("\\x%02x", b);
    }
    putchar('"');
}

/* Joins argv[from..] with single spaces (the TEXT of write and echo). */
static void join(int argc, char **argv, int from, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (int i = from; i < argc; i++) {
        int n = snprintf(out + o, cap - o, "%s%s", i > from ? " " : "", argv[i]);
        if (n < 0 || (size_t)n >= cap - o)
            break;
        o += (size_t)n;
    }
}

static int run_command(struct ctx *c, int argc, char **argv);

static int cmd_info(struct ctx *c)
{
    struct ism *m = &c->m;
    struct vdev *v = &m->v;
    printf("info pci=%s virtio-id=%u gid=0x%llx devid=0x%llx region_size=%llu notify_size=%llu "
           "regions=%llu notify=%llu max_regions=%llu queues=%u features=0x%llx eventq=%s\n",
           v->pci.addr, v->virtio_id, (unsigned long long)m->gid, (unsigned long long)m->devid,
           (unsigned long long)m->region_size, (unsigned long long)m->notify_size,
           (unsigned long long)m->regions_len, (unsigned long long)m->notify_len,
           (unsigned long long)(m->regions_len / m->region_size), v->num_queues,
           (unsigned long long)v->features, m->has_eventq ? "yes" : "no");
    return EXIT_OK;
}

static int cmd_alloc_attach(struct ctx *c, int argc, char **argv, int attach)
{
    if (argc != 2 && !(argc == 4 && strcmp(argv[2], "as") == 0)) {
        errorf("usage: %s", attach ? "attach TOKEN [as NAME]" : "alloc SIZE [as NAME]");
        return EXIT_USAGE;
    }
    const char *name = argc == 4 ? argv[3] : NULL;
    uint64_t arg, token, offset;
    int rc = parse_number(argv[0], argv[1], &arg);
    if (rc || (rc = need_device(c)))
        return rc;
    if (attach) {
        token = arg;
        rc = ism_attach(&c->m, token, &offset);
    } else {
        rc = ism_alloc(&c->m, arg, &token, &offset);
    }
    if (rc)
        return rc;
    if (attach)
        printf("attach token=0x%llx offset=0x%llx\n", (unsigned long long)token, (unsigned long long)offset);
    else
        printf("alloc token=0x%llx offset=0x%llx size=%llu\n", (unsigned long long)token,
               (unsigned long long)offset, (unsigned long long)arg);
    set_var_hex(NULL, "token", token);
    set_var_hex(NULL, "offset", offset);
    if (name) {
        set_var_hex(name, "token", token);
        set_var_hex(name, "offset", offset);
    }
    return EXIT_OK;
}

/* Parses "CMD [--timeout S] ARGS...": sets *timeout when the option is there and checks the
 * number of ARGS (exactly `args`, or at least `args` with `more`). Returns the index of the first
 * of ARGS, or -1 after printing the usage or the bad number. */
static int timeout_args(int argc, char **argv, double *timeout, int args, int more, const char *usage_text)
{
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "--timeout") == 0) {
        if (parse_seconds(argv[0], argv[2], timeout))
            return -1;
        first = 3;
    }
    int n = argc - first;
    if (more ? n < args : n != args) {
        errorf("usage: %s", usage_text);
        return -1;
    }
    return first;
}

static int cmd_wait(struct ctx *c, int argc, char **argv)
{
    double timeout = 30;
    int rc;
    if (timeout_args(argc, argv, &timeout, 0, 0, "wait [--timeout S]") < 0)
        return EXIT_USAGE;
    if ((rc = need_device(c)))
        return rc;
    static struct ism_event ev;
    if ((rc = ism_wait(&c->m, timeout, &ev)))
        return rc;
    printf("event num=%llu offsets=", (unsigned long long)ev.num);
    for (uint64_t i = 0; i < ev.count; i++)
        printf("%s0x%llx", i ? "," : "", (unsigned long long)ev.offsets[i]);
    if (ev.count < ev.num)
        printf(" (%llu not in the buffer)", (unsigned long long)(ev.num - ev.count));
    putchar('\n');
    if (ev.count)
        set_var_hex(NULL, "event", ev.offsets[0]);
    return EXIT_OK;
}

/* poll [--timeout S] OFFSET TEXT: waits until the region holds TEXT and its NUL at OFFSET (a
 * peer's write seen without an event). */
static int cmd_poll(struct ctx *c, int argc, char **argv)
{
    double timeout = 30;
    int rc, first = timeout_args(argc, argv, &timeout, 2, 1, "poll [--timeout S] OFFSET TEXT");
    if (first < 0)
        return EXIT_USAGE;
    uint64_t offset;
    char want[4096], seen[4096];
    join(argc, argv, first + 1, want, sizeof want);
    size_t len = strlen(want) + 1;
    if ((rc = parse_number("poll", argv[first], &offset)) || (rc = need_device(c)))
        return rc;
    double deadline = now_seconds() + timeout;
    for (;;) {
        if ((rc = ism_read(&c->m, offset, seen, len)))
            return rc;
        if (memcmp(seen, want, len) == 0)
            break;
        if (g_stop)
            return EXIT_STOPPED;
        if (now_seconds() > deadline) {
            errorf("poll: the region at 0x%llx did not hold \"%s\" within %g s", (unsigned long long)offset, want, timeout);
            return EXIT_NO_EVENT;
        }
        sleep_ms(5);
    }
    printf("poll offset=0x%llx text=", (unsigned long long)offset);
    print_text((const uint8_t *)seen, len);
    putchar('\n');
    return EXIT_OK;
}

/* channel send [--peer DEVID] [--timeout S] FILE | channel recv [--timeout S] TOKEN FILE */
static int cmd_channel(struct ctx *c, int argc, char **argv)
{
    const char *usage_text = "channel send [--peer DEVID] [--timeout S] FILE | channel recv [--timeout S] TOKEN FILE";
    if (argc < 2 || (strcmp(argv[1], "send") != 0 && strcmp(argv[1], "recv") != 0)) {
        errorf("usage: %s", usage_text);
        return EXIT_USAGE;
    }
    int send = argv[1][0] == 's';
    uint64_t peer = 0, token = 0;
    double timeout = 30;
    int i = 2, rc;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (send && strcmp(argv[i], "--peer") == 0) {
            if ((rc = parse_number("channel --peer", argv[i + 1], &peer)))
                return rc;
        } else if (strcmp(argv[i], "--timeout") == 0) {
            if ((rc = parse_seconds("channel --timeout", argv[i + 1], &timeout)))
                return rc;
        } else {
            break;
        }
    }
    if (argc - i != (send ? 1 : 2)) {
        errorf("usage: %s", usage_text);
        return EXIT_USAGE;
    }
    if (!send && (rc = parse_number("channel recv", argv[i], &token)))
        return rc;
    if ((rc = need_device(c)))
        return rc;
    return send ? channel_send(&c->m, peer, argv[i], timeout) : channel_recv(&c->m, token, argv[i + 1], timeout);
}

/* pause [--timeout S]: holds the device (and its regions) until a line arrives on stdin, stdin
 * ends, or S seconds pass (default: no limit). */
static int cmd_pause(int argc, char **argv)
{
    double timeout = -1;
    if (timeout_args(argc, argv, &timeout, 0, 0, "pause [--timeout S]") < 0)
        return EXIT_USAGE;
    fflush(stdout);
    double deadline = now_seconds() + timeout;
    for (;;) {
        if (g_stop)
            return EXIT_STOPPED;
        double left = timeout < 0 ? 1 : deadline - now_seconds();
        if (left <= 0) {
            printf("pause ended after %g s\n", timeout);
            return EXIT_OK;
        }
        struct pollfd p = {0, POLLIN, 0};
        int n = poll(&p, 1, left > 1 ? 1000 : (int)(left * 1000) + 1);
        if (n > 0) {
            char line[256];
            ssize_t got = read(0, line, sizeof line);
            printf("pause ended by %s\n", got > 0 ? "input" : "the end of input");
            return EXIT_OK;
        }
    }
}

static int run_command(struct ctx *c, int argc, char **argv)
{
    const char *cmd = argv[0];
    uint64_t a = 0, b = 0, d = 0;
    int rc;
    char text[4096];
    if (strcmp(cmd, "info") == 0) {
        if (argc != 1) {
            errorf("usage: info");
            return EXIT_USAGE;
        }
        return (rc = need_device(c)) ? rc : cmd_info(c);
    }
    if (strcmp(cmd, "alloc") == 0 || strcmp(cmd, "attach") == 0)
        return cmd_alloc_attach(c, argc, argv, cmd[1] == 't');
    if (strcmp(cmd, "detach") == 0) {
        if (argc != 2) {
            errorf("usage: detach OFFSET");
            return EXIT_USAGE;
        }
        if ((rc = parse_number(cmd, argv[1], &a)) || (rc = need_device(c)) || (rc = ism_detach(&c->m, a)))
            return rc;
        printf("detach offset=0x%llx\n", (unsigned long long)a);
        return EXIT_OK;
    }
    if (strcmp(cmd, "notify") == 0) {
        double timeout = 1;
        unsigned written;
        int first = timeout_args(argc, argv, &timeout, 1, 0, "notify [--timeout S] OFFSET"); /* --timeout: accepted, unused */
        if (first < 0)
            return EXIT_USAGE;
        if ((rc = parse_number(cmd, argv[first], &a)) || (rc = need_device(c)) || (rc = ism_notify(&c->m, a, &b, &written)))
            return rc;
        (void)timeout;
        printf("notify offset=0x%llx slot=%llu value=%u\n", (unsigned long long)a, (unsigned long long)b, written);
        return EXIT_OK;
    }
    if (strcmp(cmd, "grant") == 0) {
        if (argc != 4) {
            errorf("usage: grant OFFSET PEER_DEVID PERMS");
            return EXIT_USAGE;
        }
        if ((rc = parse_number(cmd, argv[1], &a)) || (rc = parse_number(cmd, argv[2], &b))
            || (rc = parse_perms(argv[3], &d)) || (rc = need_device(c)) || (rc = ism_grant(&c->m, a, b, d)))
            return rc;
        printf("grant offset=0x%llx peer=0x%llx perms=0x%llx\n", (unsigned long long)a, (unsigned long long)b,
               (unsigned long long)d);
        return EXIT_OK;
    }
    if (strcmp(cmd, "write") == 0) {
        if (argc < 3) {
            errorf("usage: write OFFSET TEXT");
            return EXIT_USAGE;
        }
        join(argc, argv, 2, text, sizeof text);
        size_t len = strlen(text) + 1;
        if ((rc = parse_number(cmd, argv[1], &a)) || (rc = need_device(c)) || (rc = ism_write(&c->m, a, text, len)))
            return rc;
        printf("write offset=0x%llx bytes=%zu\n", (unsigned long long)a, len);
        return EXIT_OK;
    }
    if (strcmp(cmd, "read") == 0) {
        if (argc != 3) {
            errorf("usage: read OFFSET LEN");
            return EXIT_USAGE;
        }
        if ((rc = parse_number(cmd, argv[1], &a)) || (rc = parse_number(cmd, argv[2], &b)))
            return rc;
        if (b > sizeof text) {
            errorf("read: at most %zu bytes at once", sizeof text);
            return EXIT_USAGE;
        }
        if ((rc = need_device(c)) || (rc = ism_read(&c->m, a, text, (size_t)b)))
            return rc;
        printf("read offset=0x%llx bytes=%llu text=", (unsigned long long)a, (unsigned long long)b);
        print_text((const uint8_t *)text, (size_t)b);
        putchar('\n');
        return EXIT_OK;
    }
    if (strcmp(cmd, "channel") == 0)
        return cmd_channel(c, argc, argv);
    if (strcmp(cmd, "wait") == 0)
        return cmd_wait(c, argc, argv);
    if (strcmp(cmd, "poll") == 0)
        return cmd_poll(c, argc, argv);
    if (strcmp(cmd, "pause") == 0)
        return cmd_pause(argc, argv);
    if (strcmp(cmd, "echo") == 0) {
        join(argc, argv, 1, text, sizeof text);
        puts(text);
        return EXIT_OK;
    }
    if (strcmp(cmd, "sleep") == 0) {
        double s;
        if (argc != 2 || (rc = parse_seconds("sleep", argv[1], &s)))
            return argc != 2 ? (errorf("usage: sleep S"), EXIT_USAGE) : rc;
        double until = now_seconds() + s;
        while (!g_stop && now_seconds() < until)
            sleep_ms(10);
        return g_stop ? EXIT_STOPPED : EXIT_OK;
    }
    if (strcmp(cmd, "expect-refused") == 0) {
        if (argc < 2 || strcmp(argv[1], "expect-refused") == 0) {
            errorf("usage: expect-refused COMMAND [ARGS]");
            return EXIT_USAGE;
        }
        rc = run_command(c, argc - 1, argv + 1);
        if (rc == EXIT_ERR_ACK) {
            printf("refused %s (ERR, as expected)\n", argv[1]);
            return EXIT_OK;
        }
        if (rc == EXIT_OK) {
            errorf("expect-refused: the device accepted %s", argv[1]);
            return EXIT_UNEXPECTED;
        }
        return rc;
    }
    errorf("unknown command '%s' (vism-guest --help lists them)", cmd);
    return EXIT_USAGE;
}

/* Expands variables in every argument, then runs the command. */
static int run_expanded(struct ctx *c, int argc, char **argv)
{
    char *exp[64];
    static char storage[64][1024];
    if (argc > 64) {
        errorf("too many arguments");
        return EXIT_USAGE;
    }
    for (int i = 0; i < argc; i++) {
        int rc = expand(argv[i], storage[i], sizeof storage[i]);
        if (rc)
            return rc;
        exp[i] = storage[i];
    }
    return run_command(c, argc, exp);
}

/* Splits a script line into words: whitespace separates, "..." groups, # starts a comment. */
static int split_line(char *line, char **words, int max)
{
    int n = 0;
    char *p = line;
    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#')
            break;
        if (n == max)
            return -1;
        if (*p == '"') {
            words[n++] = ++p;
            while (*p && *p != '"')
                p++;
            if (!*p)
                return -1;
            *p++ = 0;
        } else {
            words[n++] = p;
            while (*p && !isspace((unsigned char)*p))
                p++;
            if (*p)
                *p++ = 0;
        }
    }
    return n;
}

static int run_script(struct ctx *c, const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        errorf("cannot open script %s: %s", path, strerror(errno));
        return EXIT_USAGE;
    }
    char *line = NULL;
    size_t cap = 0;
    int rc = EXIT_OK;
    for (int lineno = 1; getline(&line, &cap, f) >= 0 && rc == EXIT_OK; lineno++) {
        line[strcspn(line, "\r\n")] = 0;
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", line);
        char *words[64];
        int n = split_line(line, words, 64);
        log_set_where(strcmp(path, "-") == 0 ? "stdin" : path, lineno);
        if (n < 0) {
            errorf("cannot split the line (unbalanced quote or more than 64 words)");
            rc = EXIT_USAGE;
        } else if (n > 0) {
            printf("> %s\n", copy + strspn(copy, " \t"));
            rc = run_expanded(c, n, words);
        }
    }
    log_set_where(NULL, 0);
    free(line);
    if (f != stdin)
        fclose(f);
    return rc;
}

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    static struct ctx c;
    c.timeout = 30;
    int i = 1, rc;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *o = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else if (strcmp(o, "-v") == 0 || strcmp(o, "--verbose") == 0) {
            log_set_verbose(1);
        } else if (strcmp(o, "--id") == 0 && val) {
            uint64_t id;
            if ((rc = parse_number("--id", val, &id)))
                return rc;
            if (id == 0 || id > 0xffff - 0x1040) {
                errorf("--id: %s is not a virtio device id", val);
                return EXIT_USAGE;
            }
            c.id = (uint32_t)id;
            i++;
        } else if (strcmp(o, "--pci") == 0 && val) {
            c.pci = val;
            i++;
        } else if (strcmp(o, "--timeout") == 0 && val) {
            if ((rc = parse_seconds("--timeout", val, &c.timeout)))
                return rc;
            i++;
        } else if (strcmp(o, "-D") == 0 && val) {
            const char *eq = strchr(val, '=');
            if (!eq || eq == val) {
                errorf("-D: expected NAME=VALUE, got '%s'", val);
                return EXIT_USAGE;
            }
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(eq - val), val);
            if ((rc = set_var(name, eq + 1)))
                return rc;
            i++;
        } else {
            errorf("unknown option '%s' or missing value", o);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[i], "run") == 0) {
        if (argc - i != 2) {
            errorf("usage: run <script|->");
            return EXIT_USAGE;
        }
        rc = run_script(&c, argv[i + 1]);
    } else {
        /* Commands separated by "--", run in order on one started device. */
        int several = 0;
        for (int k = i; k < argc; k++)
            several |= strcmp(argv[k], "--") == 0;
        rc = EXIT_OK;
        while (i < argc && rc == EXIT_OK) {
            int end = i;
            while (end < argc && strcmp(argv[end], "--") != 0)
                end++;
            if (end > i) {
                if (several) {
                    printf(">");
                    for (int k = i; k < end; k++)
                        printf(" %s", argv[k]);
                    putchar('\n');
                }
                rc = run_expanded(&c, end - i, argv + i);
            }
            i = end + 1;
        }
    }
    if (c.opened)
        ism_close(&c.m);
    if (rc == EXIT_STOPPED)
        errorf("interrupted; the device was reset");
    return rc;
}

/* vism channel (docs/channel.md) from the guest: `channel send` creates a channel and streams a
 * file into it, `channel recv` joins one and writes what arrives to a file. Both poll the rings
 * (the tool takes no interrupts) but keep the protocol: they bump their heartbeat, notify a peer
 * that announced a wait, and notify on join and close. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vism-guest.h"

/* Region layout: docs/channel.md and src/Framework/Channel/ChannelLayout.cs. */
#define CH_MAGIC 0x314E48434D534956ULL /* "VISMCHN1" */
#define CH_VERSION 2
#define CH_HEADER 4096
#define CH_MIN_REGION (CH_HEADER + 2 * 4096)
#define H_MAGIC 0x00
#define H_VERSION 0x08
#define H_HEADER_SIZE 0x0C
#define H_RING_SIZE 0x10
#define H_RING0 0x18
#define H_RING1 0x20
#define H_CREATOR 0x28
#define H_EXPECTED 0x30
#define H_ACCEPTOR 0x38
#define SIDE_CREATOR 0x40
#define SIDE_ACCEPTOR 0x80
#define S_STATE 0x00
#define S_INTERVAL 0x04
#define S_BEAT 0x08
#define RING0_PRODUCER 0x100
#define RING0_CONSUMER 0x140
#define RING1_PRODUCER 0x180
#define RING1_CONSUMER 0x1C0
#define L_CURSOR 0x00
#define L_WAITSEQ 0x100 /* its own cache line (0x200-0x2FF), not beside the cursor */
#define STATE_NONE 0
#define STATE_OPEN 1
#define STATE_CLOSED 2
#define HEARTBEAT_MS 100
#define CHUNK (64 * 1024)

struct chan {
    struct ism *m;
    uint64_t offset;
    volatile uint8_t *base;
    uint64_t ring_size;
    volatile uint8_t *tx, *rx;
    int me, peer;                 /* side blocks */
    int txp, txc, rxp, rxc;       /* lines */
    uint64_t tail, head;          /* this side's cursors */
    uint32_t tx_notified, rx_notified;
    uint64_t beats, peer_beat;
    double last_beat, peer_change, timeout;
    uint8_t notify_value;
};

static uint64_t ld64(volatile uint8_t *p) { return __atomic_load_n((volatile uint64_t *)p, __ATOMIC_ACQUIRE); }
static uint32_t ld32(volatile uint8_t *p) { return __atomic_load_n((volatile uint32_t *)p, __ATOMIC_ACQUIRE); }
static void st64(volatile uint8_t *p, uint64_t v) { __atomic_store_n((volatile uint64_t *)p, v, __ATOMIC_RELEASE); }
static void st32(volatile uint8_t *p, uint32_t v) { __atomic_store_n((volatile uint32_t *)p, v, __ATOMIC_RELEASE); }

/* Any write to the slot is an update; the value changes every time (never 0), so a device that
 * watches for changes and one that takes and clears non-zero slots both see each one. */
static void ch_notify(struct chan *c)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    volatile uint8_t *slot = c->m->notify + c->offset / c->m->region_size * c->m->notify_size;
    c->notify_value = (uint8_t)(c->notify_value + 1) ? (uint8_t)(c->notify_value + 1) : 1;
    *slot = c->notify_value;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void ch_setup(struct chan *c, struct ism *m, uint64_t offset, int creator, uint64_t ring, uint64_t r0, uint64_t r1, double timeout)
{
    memset(c, 0, sizeof *c);
    c->m = m;
    c->offset = offset;
    c->base = m->regions + offset;
    c->ring_size = ring;
    c->tx = c->base + (creator ? r0 : r1);
    c->rx = c->base + (creator ? r1 : r0);
    c->me = creator ? SIDE_CREATOR : SIDE_ACCEPTOR;
    c->peer = creator ? SIDE_ACCEPTOR : SIDE_CREATOR;
    c->txp = creator ? RING0_PRODUCER : RING1_PRODUCER;
    c->txc = creator ? RING0_CONSUMER : RING1_CONSUMER;
    c->rxp = creator ? RING1_PRODUCER : RING0_PRODUCER;
    c->rxc = creator ? RING1_CONSUMER : RING0_CONSUMER;
    c->timeout = timeout;
    c->last_beat = c->peer_change = now_seconds();
    st32(c->base + c->me + S_INTERVAL, HEARTBEAT_MS);
}

/* Bumps this side's heartbeat every HEARTBEAT_MS and checks the peer's: EXIT_NO_EVENT when an
 * open peer's heartbeat has not moved for the timeout (at least four of its intervals). */
static int ch_tick(struct chan *c)
{
    double now = now_seconds();
    if (now - c->last_beat >= HEARTBEAT_MS / 1000.0) {
        c->last_beat = now;
        st64(c->base + c->me + S_BEAT, ++c->beats);
    }
    if (g_stop)
        return EXIT_STOPPED;
    if (ld32(c->base + c->peer + S_STATE) != STATE_OPEN)
        return EXIT_OK;
    uint64_t beat = ld64(c->base + c->peer + S_BEAT);
    if (beat != c->peer_beat) {
        c->peer_beat = beat;
        c->peer_change = now;
        return EXIT_OK;
    }
    uint32_t interval = ld32(c->base + c->peer + S_INTERVAL);
    double limit = interval > 60000 ? 240 : 4.0 * (interval ? interval : 1) / 1000;
    if (limit < c->timeout)
        limit = c->timeout;
    if (now - c->peer_change > limit) {
        errorf("channel: the peer stopped: its heartbeat has not moved for %.1f s", now - c->peer_change);
        return EXIT_NO_EVENT;
    }
    return EXIT_OK;
}

/* Spins a while, then sleeps a millisecond: the tool has no interrupts to block on. */
static void ch_idle(int *idle)
{
    if (++*idle > 200)
        sleep_ms(1);
}

/* After moving a cursor: notify once per wait the peer announced on `peer_line`. */
static void ch_publish(struct chan *c, int line, uint64_t cursor, int peer_line, uint32_t *notified)
{
    st64(c->base + line + L_CURSOR, cursor);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint32_t seq = ld32(c->base + peer_line + L_WAITSEQ);
    if (seq != *notified) {
        *notified = seq;
        ch_notify(c);
    }
}

static void ch_close(struct chan *c)
{
    st32(c->base + c->me + S_STATE, STATE_CLOSED);
    ch_notify(c);
}

static void ring_copy_in(struct chan *c, uint64_t cursor, const uint8_t *src, size_t n)
{
    uint64_t at = cursor % c->ring_size;
    size_t first = n < c->ring_size - at ? n : (size_t)(c->ring_size - at);
    memcpy((uint8_t *)(uintptr_t)(c->tx + at), src, first);
    memcpy((uint8_t *)(uintptr_t)c->tx, src + first, n - first);
}

static void ring_copy_out(struct chan *c, uint64_t cursor, uint8_t *dst, size_t n)
{
    uint64_t at = cursor % c->ring_size;
    size_t first = n < c->ring_size - at ? n : (size_t)(c->ring_size - at);
    memcpy(dst, (const uint8_t *)(uintptr_t)(c->rx + at), first);
    memcpy(dst + first, (const uint8_t *)(uintptr_t)c->rx, n - first);
}

static void put64(volatile uint8_t *p, uint64_t v) { st64(p, v); }

int channel_send(struct ism *m, uint64_t peer, const char *path, double timeout)
{
    if (m->region_size < CH_MIN_REGION) {
        errorf("channel: regions are %llu bytes; a channel needs at least %d", (unsigned long long)m->region_size, CH_MIN_REGION);
        return EXIT_DEVICE;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        errorf("channel send: cannot open %s: %s", path, strerror(errno));
        return EXIT_USAGE;
    }
    uint64_t token, offset;
    int rc = ism_alloc(m, m->region_size, &token, &offset);
    if (rc) {
        close(fd);
        return rc;
    }
    uint64_t ring = (m->region_size - CH_HEADER) / 2 / 64 * 64;
    struct chan c;
    ch_setup(&c, m, offset, 1, ring, CH_HEADER, CH_HEADER + ring, timeout);
    st32(c.base + H_VERSION, CH_VERSION);
    st32(c.base + H_HEADER_SIZE, CH_HEADER);
    put64(c.base + H_RING_SIZE, ring);
    put64(c.base + H_RING0, CH_HEADER);
    put64(c.base + H_RING1, CH_HEADER + ring);
    put64(c.base + H_CREATOR, m->devid);
    put64(c.base + H_EXPECTED, peer);
    st32(c.base + SIDE_CREATOR + S_STATE, STATE_OPEN);
    st64(c.base + H_MAGIC, CH_MAGIC);
    if (peer && ((rc = ism_grant(m, offset, peer, VIRTIO_ISM_PERM_READ | VIRTIO_ISM_PERM_WRITE | VIRTIO_ISM_PERM_ATTACH))
                 || (rc = ism_grant(m, offset, 0, 0)))) {
        close(fd);
        return rc;
    }
    printf("channel listen token=0x%llx offset=0x%llx peer=0x%llx ring=%llu\n", (unsigned long long)token,
           (unsigned long long)offset, (unsigned long long)peer, (unsigned long long)ring);
    fflush(stdout);

    /* Wait for the acceptor (it may still be booting). */
    double deadline = now_seconds() + (timeout > 600 ? timeout : 600);
    int idle = 0;
    while (ld32(c.base + SIDE_ACCEPTOR + S_STATE) == STATE_NONE) {
        if ((rc = ch_tick(&c)))
            goto out;
        if (now_seconds() > deadline) {
            errorf("channel send: no peer joined within %g s", timeout > 600 ? timeout : 600);
            rc = EXIT_NO_EVENT;
            goto out;
        }
        ch_idle(&idle);
    }
    c.peer_change = now_seconds();
    printf("channel accepted peer=0x%llx\n", (unsigned long long)ld64(c.base + H_ACCEPTOR));
    fflush(stdout);

    static uint8_t buf[CHUNK];
    struct sha256 sha;
    sha256_init(&sha);
    uint64_t total = 0;
    double start = now_seconds();
    for (;;) {
        ssize_t got = read(fd, buf, sizeof buf);
        if (got < 0) {
            errorf("channel send: reading %s: %s", path, strerror(errno));
            rc = EXIT_USAGE;
            goto out;
        }
        if (got == 0)
            break;
        sha256_update(&sha, buf, (size_t)got);
        for (size_t done = 0; done < (size_t)got;) {
            uint64_t used = c.tail - ld64(c.base + c.txc + L_CURSOR);
            if (used > ring) {
                errorf("channel send: the peer broke the protocol (read cursor ahead of the write cursor)");
                rc = EXIT_DEVICE;
                goto out;
            }
            if (ld32(c.base + SIDE_ACCEPTOR + S_STATE) == STATE_CLOSED) {
                errorf("channel send: the peer closed the channel after %llu bytes", (unsigned long long)(total + done));
                rc = EXIT_NO_EVENT;
                goto out;
            }
            size_t n = (size_t)(ring - used) < (size_t)got - done ? (size_t)(ring - used) : (size_t)got - done;
            if (n == 0) {
                if ((rc = ch_tick(&c)))
                    goto out;
                ch_idle(&idle);
                continue;
            }
            idle = 0;
            ring_copy_in(&c, c.tail, buf + done, n);
            c.tail += n;
            ch_publish(&c, c.txp, c.tail, c.txc, &c.tx_notified);
            done += n;
        }
        total += (uint64_t)got;
        if ((rc = ch_tick(&c)))
            goto out;
    }
    ch_close(&c);
    char hex[65];
    sha256_hex(&sha, hex);
    double took = now_seconds() - start;
    printf("channel sent bytes=%llu sha256=%s seconds=%.3f\n", (unsigned long long)total, hex, took);
    rc = EXIT_OK;
out:
    close(fd);
    if (rc)
        ch_close(&c);
    return rc;
}

int channel_recv(struct ism *m, uint64_t token, const char *path, double timeout)
{
    uint64_t offset;
    int rc = ism_attach(m, token, &offset);
    if (rc)
        return rc;
    volatile uint8_t *base = m->regions + offset;
    uint64_t size = m->region_size;
    if (offset > m->regions_len || size > m->regions_len - offset)
        size = m->regions_len - offset;
    uint64_t ring = ld64(base + H_RING_SIZE), r0 = ld64(base + H_RING0), r1 = ld64(base + H_RING1);
    if (ld64(base + H_MAGIC) != CH_MAGIC || ld32(base + H_VERSION) != CH_VERSION || ld32(base + H_HEADER_SIZE) != CH_HEADER
        || ring < 64 || ring % 64 || ring > size || r0 < CH_HEADER || r0 > size - ring || r1 < CH_HEADER || r1 > size - ring
        || (r0 < r1 ? r1 - r0 : r0 - r1) < ring) {
        errorf("channel recv: the region of token 0x%llx holds no valid vism channel (magic 0x%llx)", (unsigned long long)token,
               (unsigned long long)ld64(base + H_MAGIC));
        return EXIT_DEVICE;
    }
    uint64_t expected = ld64(base + H_EXPECTED);
    if (expected && expected != m->devid) {
        errorf("channel recv: the channel was offered to devid 0x%llx; this device is 0x%llx", (unsigned long long)expected,
               (unsigned long long)m->devid);
        return EXIT_ERR_ACK;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        errorf("channel recv: cannot create %s: %s", path, strerror(errno));
        return EXIT_USAGE;
    }
    struct chan c;
    ch_setup(&c, m, offset, 0, ring, r0, r1, timeout);
    put64(base + H_ACCEPTOR, m->devid);
    st32(base + SIDE_ACCEPTOR + S_STATE, STATE_OPEN);
    ch_notify(&c);
    printf("channel joined token=0x%llx offset=0x%llx peer=0x%llx ring=%llu\n", (unsigned long long)token,
           (unsigned long long)offset, (unsigned long long)ld64(base + H_CREATOR), (unsigned long long)ring);
    fflush(stdout);

    static uint8_t buf[CHUNK];
    struct sha256 sha;
    sha256_init(&sha);
    uint64_t total = 0;
    int idle = 0;
    double start = now_seconds();
    for (;;) {
        uint64_t avail = ld64(base + c.rxp + L_CURSOR) - c.head;
        if (avail > ring) {
            errorf("channel recv: the peer broke the protocol (write cursor %llu bytes ahead in a %llu-byte ring)",
                   (unsigned long long)avail, (unsigned long long)ring);
            rc = EXIT_DEVICE;
            break;
        }
        if (avail == 0) {
            if (ld32(base + SIDE_CREATOR + S_STATE) == STATE_CLOSED
                && ld64(base + c.rxp + L_CURSOR) == c.head) /* the close follows the last byte */
                break;
            if ((rc = ch_tick(&c)))
                break;
            ch_idle(&idle);
            continue;
        }
        idle = 0;
        size_t n = avail < sizeof buf ? (size_t)avail : sizeof buf;
        ring_copy_out(&c, c.head, buf, n);
        c.head += n;
        ch_publish(&c, c.rxc, c.head, c.rxp, &c.rx_notified);
        sha256_update(&sha, buf, n);
        for (size_t w = 0; w < n;) {
            ssize_t put = write(fd, buf + w, n - w);
            if (put < 0) {
                errorf("channel recv: writing %s: %s", path, strerror(errno));
                rc = EXIT_SYSTEM;
                goto out;
            }
            w += (size_t)put;
        }
        total += n;
        if ((rc = ch_tick(&c)))
            break;
    }
    if (rc == EXIT_OK) {
        char hex[65];
        sha256_hex(&sha, hex);
        printf("channel received bytes=%llu sha256=%s seconds=%.3f\n", (unsigned long long)total, hex, now_seconds() - start);
    }
out:
    ch_close(&c);
    close(fd);
    if (rc == EXIT_OK)
        rc = ism_detach(m, offset);
    return rc;
}

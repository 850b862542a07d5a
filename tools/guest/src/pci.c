/* A PCI function through sysfs: find it, take it from its driver, enable it, map its BARs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vism-guest.h"

#define SYSFS_PCI "/sys/bus/pci/devices"
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_COMMAND_INTX_DISABLE 0x400

static int read_hex_file(const char *dir, const char *name, unsigned long *value)
{
    char path[PATH_MAX], buf[64];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *line = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!line)
        return -1;
    char *end;
    errno = 0;
    *value = strtoul(buf, &end, 16);
    return errno || end == buf ? -1 : 0;
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)len ? 0 : -1;
}

int pci_find(uint16_t vendor, uint16_t device, const char *addr, struct pci_dev *dev)
{
    DIR *d = opendir(SYSFS_PCI);
    if (!d) {
        errorf("cannot list %s: %s (is sysfs mounted?)", SYSFS_PCI, strerror(errno));
        return EXIT_SYSTEM;
    }
    struct dirent *e;
    int found = 0;
    char best[sizeof dev->addr] = "";
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof best)
            continue;
        if (addr && strcmp(addr, e->d_name) != 0)
            continue;
        char path[PATH_MAX];
        unsigned long v, dv;
        snprintf(path, sizeof path, "%s/%s", SYSFS_PCI, e->d_name);
        if (read_hex_file(path, "vendor", &v) || read_hex_file(path, "device", &dv))
            continue;
        if (v != vendor || dv != device)
            continue;
        /* Several matches: take the lowest address, so the choice is stable across runs. */
        if (!found || strcmp(e->d_name, best) < 0)
            snprintf(best, sizeof best, "%s", e->d_name);
        found = 1;
    }
    closedir(d);
    if (!found)
        return EXIT_NODEV;
    memset(dev, 0, sizeof *dev);
    dev->config_fd = -1;
    snprintf(dev->addr, sizeof dev->addr, "%s", best);
    snprintf(dev->path, sizeof dev->path, "%s/%s", SYSFS_PCI, best);
    dev->vendor = vendor;
    dev->device = device;
    return EXIT_OK;
}

int pci_take(struct pci_dev *dev)
{
    char path[PATH_MAX], driver[PATH_MAX];
    snprintf(path, sizeof path, "%s/driver", dev->path);
    ssize_t n = readlink(path, driver, sizeof driver - 1);
    if (n > 0) {
        driver[n] = 0;
        const char *name = strrchr(driver, '/');
        name = name ? name + 1 : driver;
        snprintf(path, sizeof path, "%s/driver/unbind", dev->path);
        if (write_file(path, dev->addr)) {
            errorf("cannot unbind %s from %s: %s (run as root)", dev->addr, name, strerror(errno));
            return EXIT_SYSTEM;
        }
        debugf("unbound %s from %s", dev->addr, name);
    }
    snprintf(path, sizeof path, "%s/enable", dev->path);
    if (write_file(path, "1")) {
        errorf("cannot enable %s (%s): %s", dev->addr, path, strerror(errno));
        return EXIT_SYSTEM;
    }
    snprintf(path, sizeof path, "%s/config", dev->path);
    dev->config_fd = open(path, O_RDWR | O_CLOEXEC);
    if (dev->config_fd < 0) {
        errorf("cannot open %s: %s (run as root)", path, strerror(errno));
        return EXIT_SYSTEM;
    }
    uint16_t cmd;
    if (pread(dev->config_fd, &cmd, 2, PCI_COMMAND) != 2) {
        errorf("cannot read the PCI command register of %s: %s", dev->addr, strerror(errno));
        return EXIT_SYSTEM;
    }
    cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
    if (pwrite(dev->config_fd, &cmd, 2, PCI_COMMAND) != 2) {
        errorf("cannot write the PCI command register of %s: %s", dev->addr, strerror(errno));
        return EXIT_SYSTEM;
    }
    return EXIT_OK;
}

ssize_t pci_read_config(struct pci_dev *dev, uint8_t *buf, size_t len)
{
    if (dev->config_fd < 0)
        return -1;
    return pread(dev->config_fd, buf, len, 0);
}

int pci_map_bar(struct pci_dev *dev, int bar)
{
    if (bar < 0 || bar > 5) {
        errorf("%s: BAR %d does not exist", dev->addr, bar);
        return EXIT_DEVICE;
    }
    if (dev->bars[bar].base)
        return EXIT_OK;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/resource%d", dev->path, bar);
    int fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
    if (fd < 0) {
        errorf("%s: cannot open BAR %d (%s): %s", dev->addr, bar, path, strerror(errno));
        return EXIT_DEVICE;
    }
    struct stat st;
    if (fstat(fd, &st) || st.st_size <= 0) {
        errorf("%s: BAR %d has no size", dev->addr, bar);
        close(fd);
        return EXIT_DEVICE;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int saved = errno;
    close(fd);
    if (p == MAP_FAILED) {
        errorf("%s: cannot map BAR %d (%lld bytes): %s", dev->addr, bar, (long long)st.st_size,
               strerror(saved));
        return EXIT_DEVICE;
    }
    dev->bars[bar].base = p;
    dev->bars[bar].size = (uint64_t)st.st_size;
    debugf("mapped BAR %d: %#llx bytes", bar, (unsigned long long)st.st_size);
    return EXIT_OK;
}

void pci_close(struct pci_dev *dev)
{
    for (int i = 0; i < 6; i++) {
        if (dev->bars[i].base)
            munmap((void *)dev->bars[i].base, dev->bars[i].size);
        dev->bars[i].base = NULL;
    }
    if (dev->config_fd >= 0)
        close(dev->config_fd);
    dev->config_fd = -1;
}

/*
 * An independent Modbus TCP server on libmodbus for the collector tests and the bench.
 *
 * Usage: modbus_server PORT FILE [-v] [-m] [-s UNIT]...
 *   PORT  listen on 127.0.0.1:PORT (several clients at once, one select loop)
 *   FILE  the register tables, one mapping per unit id (re-read on SIGHUP):
 *           unit 1                 start the tables of unit id 1 (answered); a file may hold several
 *           size hr 200            table size (co di hr ir; default 10000 each)
 *           hr 0 0x3f80 0x0000     registers from an address on (values in C notation)
 *           ir 10 1 2 3            input registers
 *           co 0 1 0 1             coils (0 or 1)
 *           di 0 1                 discrete inputs
 *           hole hr 20 4           reads touching hr 20-23 get exception 2 (illegal data address)
 *  -v     print one line per request to stdout: REQ unit=U fc=F addr=A count=N
 *  -m     after every register read, add 1 to the odd-addressed registers read (values keep changing)
 *  -s U   unit id U never gets an answer (the client times out); other unknown unit ids get exception 11
 *
 * Reads of unknown units, holes or addresses past a table's size get a Modbus exception; everything else is
 * libmodbus's own modbus_reply, so the framing is independent of pymodbus.
 */
#include <errno.h>
#include <modbus.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_UNITS 16
#define MAX_HOLES 64
#define DEFAULT_SIZE 10000

struct hole { int table; int addr; int count; };  /* table: function code of the read (1-4) */

struct unit {
    int id;
    int sizes[4];  /* co di hr ir */
    modbus_mapping_t *map;
    struct hole holes[MAX_HOLES];
    int n_holes;
};

static struct unit units[MAX_UNITS];
static int n_units;
static int silent[MAX_UNITS];
static int n_silent;
static volatile sig_atomic_t reload_wanted;

static int table_of(const char *name) {
    if (!strcmp(name, "co")) return 1;
    if (!strcmp(name, "di")) return 2;
    if (!strcmp(name, "hr")) return 3;
    if (!strcmp(name, "ir")) return 4;
    return 0;
}

static void free_units(void) {
    for (int i = 0; i < n_units; i++) modbus_mapping_free(units[i].map);
    n_units = 0;
}

static int alloc_map(struct unit *u) {
    u->map = modbus_mapping_new(u->sizes[0], u->sizes[1], u->sizes[2], u->sizes[3]);
    return u->map ? 0 : -1;
}

static void put(struct unit *u, int table, int addr, long value) {
    if (!u->map && alloc_map(u) < 0) return;
    if (addr < 0 || addr >= u->sizes[table - 1]) {
        fprintf(stderr, "address %d outside table %d of unit %d; ignored\n", addr, table, u->id);
        return;
    }
    switch (table) {
    case 1: u->map->tab_bits[addr] = value ? 1 : 0; break;
    case 2: u->map->tab_input_bits[addr] = value ? 1 : 0; break;
    case 3: u->map->tab_registers[addr] = (uint16_t)value; break;
    case 4: u->map->tab_input_registers[addr] = (uint16_t)value; break;
    }
}

static int load(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); return -1; }
    free_units();
    char line[65536];
    struct unit *u = NULL;
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *tok = strtok(line, " \t\r\n");
        if (!tok) continue;
        if (!strcmp(tok, "unit")) {
            if (n_units == MAX_UNITS) break;
            u = &units[n_units++];
            memset(u, 0, sizeof *u);
            u->id = atoi(strtok(NULL, " \t\r\n"));
            for (int i = 0; i < 4; i++) u->sizes[i] = DEFAULT_SIZE;
        } else if (!u) {
            fprintf(stderr, "%s: a line before the first 'unit' line; ignored\n", path);
        } else if (!strcmp(tok, "size")) {
            int t = table_of(strtok(NULL, " \t\r\n"));
            if (t && !u->map) u->sizes[t - 1] = atoi(strtok(NULL, " \t\r\n"));
        } else if (!strcmp(tok, "hole")) {
            int t = table_of(strtok(NULL, " \t\r\n"));
            if (t && u->n_holes < MAX_HOLES) {
                struct hole *h = &u->holes[u->n_holes++];
                h->table = t;
                h->addr = atoi(strtok(NULL, " \t\r\n"));
                h->count = atoi(strtok(NULL, " \t\r\n"));
            }
        } else if (table_of(tok)) {
            int t = table_of(tok);
            int addr = atoi(strtok(NULL, " \t\r\n"));
            for (char *v = strtok(NULL, " \t\r\n"); v; v = strtok(NULL, " \t\r\n")) put(u, t, addr++, strtol(v, NULL, 0));
        }
    }
    fclose(f);
    for (int i = 0; i < n_units; i++)
        if (!units[i].map && alloc_map(&units[i]) < 0) return -1;
    return 0;
}

static struct unit *find_unit(int id) {
    for (int i = 0; i < n_units; i++)
        if (units[i].id == id) return &units[i];
    return NULL;
}

static int is_silent(int id) {
    for (int i = 0; i < n_silent; i++)
        if (silent[i] == id) return 1;
    return 0;
}

static int touches_hole(const struct unit *u, int fc, int addr, int count) {
    for (int i = 0; i < u->n_holes; i++) {
        const struct hole *h = &u->holes[i];
        if (h->table == fc && addr < h->addr + h->count && h->addr < addr + count) return 1;
    }
    return 0;
}

static void on_hup(int sig) { (void)sig; reload_wanted = 1; }

/* One request from a readable client socket; returns -1 when the client is gone. */
static int serve_one(modbus_t *ctx, int verbose, int mutate) {
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    int rc = modbus_receive(ctx, query);
    if (rc <= 0) return rc;
    int hl = modbus_get_header_length(ctx);  /* 7 for TCP; the unit id is its last byte */
    int unit_id = query[hl - 1], fc = query[hl];
    int addr = (query[hl + 1] << 8) | query[hl + 2], count = (query[hl + 3] << 8) | query[hl + 4];
    if (verbose) {
        printf("REQ unit=%d fc=%d addr=%d count=%d\n", unit_id, fc, addr, count);
        fflush(stdout);
    }
    if (is_silent(unit_id)) return 0;
    struct unit *u = find_unit(unit_id);
    if (!u) return modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_GATEWAY_TARGET) < 0 ? -1 : 0;
    if (fc >= 1 && fc <= 4 && touches_hole(u, fc, addr, count))
        return modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS) < 0 ? -1 : 0;
    if (modbus_reply(ctx, query, rc, u->map) < 0) return -1;
    if (mutate && (fc == 3 || fc == 4)) {
        uint16_t *tab = fc == 3 ? u->map->tab_registers : u->map->tab_input_registers;
        int size = fc == 3 ? u->sizes[2] : u->sizes[3];
        for (int a = addr | 1; a < addr + count && a < size; a += 2) tab[a]++;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT FILE [-v] [-m] [-s UNIT]...\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), verbose = 0, mutate = 0;
    const char *path = argv[2];
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "-v")) verbose = 1;
        else if (!strcmp(argv[i], "-m")) mutate = 1;
        else if (!strcmp(argv[i], "-s") && i + 1 < argc && n_silent < MAX_UNITS) silent[n_silent++] = atoi(argv[++i]);
    }
    if (load(path) < 0) return 1;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);

    modbus_t *ctx = modbus_new_tcp("127.0.0.1", port);
    int server = modbus_tcp_listen(ctx, 64);
    if (server < 0) {
        fprintf(stderr, "listen on 127.0.0.1:%d: %s\n", port, modbus_strerror(errno));
        return 1;
    }
    printf("READY modbus 127.0.0.1:%d\n", port);
    fflush(stdout);

    fd_set all;
    FD_ZERO(&all);
    FD_SET(server, &all);
    int max_fd = server;
    for (;;) {
        if (reload_wanted) {
            reload_wanted = 0;
            if (load(path) < 0) return 1;
            printf("RELOADED\n");
            fflush(stdout);
        }
        fd_set ready = all;
        if (select(max_fd + 1, &ready, NULL, NULL, NULL) < 0) {
            if (errno == EINTR) continue;
            perror("select");
            return 1;
        }
        for (int fd = 0; fd <= max_fd; fd++) {
            if (!FD_ISSET(fd, &ready)) continue;
            if (fd == server) {
                int client = accept(server, NULL, NULL);
                if (client < 0) continue;
                FD_SET(client, &all);
                if (client > max_fd) max_fd = client;
                continue;
            }
            modbus_set_socket(ctx, fd);
            if (serve_one(ctx, verbose, mutate) < 0) {
                close(fd);
                FD_CLR(fd, &all);
            }
        }
    }
}

/*
 * A bare libmodbus client for the Modbus CPU benchmark (bench/bench_collector_modbus_cpu.py): the physical
 * reference of what reading and decoding float32 holding registers costs without Python.
 *
 * Usage: modbus_client_bench PORT WARMUP_S WINDOW_S ADDR:COUNT [ADDR:COUNT]...
 *   Reads the given holding-register requests of unit 1 on 127.0.0.1:PORT one after the other, over and over,
 *   and decodes every two registers as a big-endian (ABCD) float32. After WARMUP_S seconds it measures WINDOW_S
 *   seconds and prints one line: VALUES CPU_SECONDS WALL_SECONDS (values decoded in the window, the process's CPU
 *   time and the wall time of the window). Exit status 1 on any failed read.
 */
#include <errno.h>
#include <modbus.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_REQUESTS 256

static double seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s PORT WARMUP_S WINDOW_S ADDR:COUNT...\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    double warmup = atof(argv[2]), window = atof(argv[3]);
    int addrs[MAX_REQUESTS], counts[MAX_REQUESTS], n = 0;
    for (int i = 4; i < argc && n < MAX_REQUESTS; i++, n++) {
        if (sscanf(argv[i], "%d:%d", &addrs[n], &counts[n]) != 2 || counts[n] < 1 || counts[n] > 125) {
            fprintf(stderr, "bad request %s (ADDR:COUNT, COUNT 1-125)\n", argv[i]);
            return 2;
        }
    }
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", port);
    if (!ctx || modbus_connect(ctx) < 0 || modbus_set_slave(ctx, 1) < 0) {
        fprintf(stderr, "connect: %s\n", modbus_strerror(errno));
        return 1;
    }
    uint16_t regs[125];
    volatile double sink = 0;  /* the decoded values are used, so the decoding is not optimised away */
    double start = seconds(CLOCK_MONOTONIC), t0 = 0, cpu0 = 0;
    long values = 0;
    int measuring = 0;
    for (;;) {
        double now = seconds(CLOCK_MONOTONIC);
        if (!measuring && now - start >= warmup) {
            measuring = 1;
            values = 0;
            t0 = now;
            cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
        }
        if (measuring && now - t0 >= window) break;
        for (int r = 0; r < n; r++) {
            if (modbus_read_registers(ctx, addrs[r], counts[r], regs) != counts[r]) {
                fprintf(stderr, "read %d:%d: %s\n", addrs[r], counts[r], modbus_strerror(errno));
                return 1;
            }
            for (int j = 0; j + 1 < counts[r]; j += 2) {
                uint32_t bits = (uint32_t)regs[j] << 16 | regs[j + 1];
                float f;
                memcpy(&f, &bits, sizeof f);
                sink += f;
                values++;
            }
        }
    }
    double cpu = seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0, wall = seconds(CLOCK_MONOTONIC) - t0;
    printf("%ld %.6f %.6f\n", values, cpu, wall);
    modbus_close(ctx);
    modbus_free(ctx);
    return 0;
}

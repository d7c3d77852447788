/*
 * Native (C) receive reference for the recv_qos0_cb scenario of bench/run.py: a
 * libmosquitto client that subscribes, counts N QoS 0 messages in its message callback
 * (touching each payload) and reports first/last arrival times (CLOCK_MONOTONIC, the
 * clock of Python's time.monotonic()) and its CPU time, as the JSON-lines protocol of
 * bench/workers.py:
 *
 *   mosq_recv PORT TOPIC N TIMEOUT_S CLIENT_ID
 *
 * stdout: {"event": "ready"} after SUBACK, then {"event": "result", ...}.
 *
 * Built by run.py with `cc -O2 mosq_recv.c -l:libmosquitto.so.1`. The prototypes below are
 * those of mosquitto.h (libmosquitto 1.x/2.x ABI), declared here so that only the runtime
 * library (Debian package libmosquitto1, a dependency of mosquitto-clients) is needed.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct mosquitto;
struct mosquitto_message {
    int mid;
    char *topic;
    void *payload;
    int payloadlen;
    int qos;
    bool retain;
};

int mosquitto_lib_init(void);
struct mosquitto *mosquitto_new(const char *id, bool clean_session, void *obj);
void mosquitto_subscribe_callback_set(struct mosquitto *m,
                                      void (*cb)(struct mosquitto *, void *, int, int, const int *));
void mosquitto_message_callback_set(struct mosquitto *m,
                                    void (*cb)(struct mosquitto *, void *,
                                               const struct mosquitto_message *));
int mosquitto_connect(struct mosquitto *m, const char *host, int port, int keepalive);
int mosquitto_subscribe(struct mosquitto *m, int *mid, const char *sub, int qos);
int mosquitto_loop(struct mosquitto *m, int timeout, int max_packets);
int mosquitto_disconnect(struct mosquitto *m);

static long expected;
static long count;
static unsigned long long nbytes;
static double t_first, t_last;
static bool subscribed;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + (double)r.ru_utime.tv_usec / 1e6 +
           (double)r.ru_stime.tv_sec + (double)r.ru_stime.tv_usec / 1e6;
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted) {
    (void)m; (void)obj; (void)mid; (void)n; (void)granted;
    subscribed = true;
    printf("{\"event\": \"ready\"}\n");
    fflush(stdout);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
    (void)m; (void)obj;
    double t = now();
    if (count == 0) t_first = t;
    count++;
    nbytes += (unsigned long long)msg->payloadlen;
    t_last = t;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT TOPIC N TIMEOUT_S CLIENT_ID\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    const char *topic = argv[2];
    expected = atol(argv[3]);
    double timeout = atof(argv[4]);
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(argv[5], true, NULL);
    if (!m) {
        printf("{\"event\": \"result\", \"error\": \"mosquitto_new failed\"}\n");
        return 1;
    }
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_message_callback_set(m, on_message);
    if (mosquitto_connect(m, "127.0.0.1", port, 60) != 0) {
        printf("{\"event\": \"result\", \"error\": \"connect failed\"}\n");
        return 1;
    }
    mosquitto_subscribe(m, NULL, topic, 0);
    double deadline = now() + timeout;
    double c0 = 0.0;
    bool started = false;
    while (count < expected && now() < deadline) {
        if (mosquitto_loop(m, 100, 1) != 0) break;
        if (subscribed && !started) {
            started = true;
            c0 = cpu();
        }
    }
    double c1 = cpu();
    mosquitto_disconnect(m);
    printf("{\"event\": \"result\", \"received\": %ld, \"bytes\": %llu, \"t_first\": %.9f, "
           "\"t_last\": %.9f, \"cpu_s\": %.6f}\n",
           count, nbytes, t_first, t_last, c1 - c0);
    fflush(stdout);
    return 0;
}

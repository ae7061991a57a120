/*
 * dlmfs_check: drive libo2dlm step by step, for the kernel tests.
 *
 * It uses only the public API of <o2dlm/o2dlm.h>, so the same source is
 * linked statically once against ocfs2-tools' libo2dlm.a (the reference)
 * and once against ours, and both binaries run the same scenarios in a qemu
 * guest on a real ocfs2_dlmfs (python-tests/kernel/test_dlmfs_backend.py).
 *
 * Usage: dlmfs_check [-p DLMFS_PATH] STEP...
 * One argument per step; fields are separated by ':' and the last field of
 * a step keeps any further ':' (LVB text, paths):
 *   init:DOMAIN              o2dlm_initialize(DLMFS_PATH, DOMAIN)
 *   lock:ID:LEVEL[:try]      o2dlm_lock; LEVEL is pr, ex or a number
 *   bast:ID:LEVEL[:try]      o2dlm_lock_with_bast with a counting callback
 *   waitbast:ID:SECS         poll the BAST fd; on POLLIN o2dlm_process_bast
 *   processbast:FD           o2dlm_process_bast on an arbitrary fd
 *   unlock:ID                o2dlm_unlock
 *   drop:ID                  o2dlm_drop_lock
 *   writelvb:ID:TEXT         o2dlm_write_lvb of strlen(TEXT) bytes
 *   readlvb:ID[:LEN]         o2dlm_read_lvb into a LEN-byte buffer (64)
 *   caps                     o2dlm_supports_bast / o2dlm_supports_stackglue
 *   destroy                  o2dlm_destroy
 *   ls                       list the domain directory (readdir, no API)
 *   sleep:SECS  mark:TEXT  touch:PATH  waitfile:SECS:PATH
 * Every step prints one line (ls prints ENTRY lines first):
 *   RESULT op=<step> [id=ID] code=<errcode> name=<O2DLM_ET_*|OK> t=<s> ... msg="..."
 * Output is line buffered so a host can follow it while the program waits.
 * Exit status: 0 when every step ran, 2 for a usage error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <o2dlm/o2dlm.h>

#define ET(x) { x, #x }
static const struct {
	errcode_t code;
	const char *name;
} codes[] = {
	ET(O2DLM_ET_NO_MEMORY), ET(O2DLM_ET_SERVICE_UNAVAILABLE),
	ET(O2DLM_ET_INVALID_LOCK_NAME), ET(O2DLM_ET_INVALID_LOCK_LEVEL),
	ET(O2DLM_ET_INTERNAL_FAILURE), ET(O2DLM_ET_NAME_TOO_LONG),
	ET(O2DLM_ET_STATFS), ET(O2DLM_ET_NO_FS_DIR), ET(O2DLM_ET_NO_FS),
	ET(O2DLM_ET_OPEN_DLM_DIR), ET(O2DLM_ET_NO_DOMAIN_DIR),
	ET(O2DLM_ET_BAD_DOMAIN_DIR), ET(O2DLM_ET_BUSY_DOMAIN_DIR),
	ET(O2DLM_ET_DOMAIN_DIR), ET(O2DLM_ET_DOMAIN_DESTROY),
	ET(O2DLM_ET_DOMAIN_CREATE), ET(O2DLM_ET_RANDOM), ET(O2DLM_ET_BUSY_LOCK),
	ET(O2DLM_ET_OUTPUT_ERROR), ET(O2DLM_ET_UNLINK),
	ET(O2DLM_ET_UNKNOWN_LOCK), ET(O2DLM_ET_RECURSIVE_LOCK),
	ET(O2DLM_ET_LOCKING), ET(O2DLM_ET_FAILED_UNLOCKS),
	ET(O2DLM_ET_INVALID_ARGS), ET(O2DLM_ET_TRYLOCK_FAILED),
	ET(O2DLM_ET_LVB_READ), ET(O2DLM_ET_LVB_WRITE), ET(O2DLM_ET_SEEK),
	ET(O2DLM_ET_DOMAIN_BUSY), ET(O2DLM_ET_BAST_UNSUPPORTED),
	ET(O2DLM_ET_LVB_INVALID),
};

/* One BAST registration: the callback counts into it. */
struct bast_rec {
	char id[O2DLM_LOCK_ID_MAX_LEN + 8];
	int fd;
	int calls;
	int wrong_arg;
};
#define MAX_BASTS 16
static struct bast_rec basts[MAX_BASTS];
static int nbasts;

static struct o2dlm_ctxt *ctx;
static const char *dlmfs_path = "/dlm";
static char domain[512];
static struct timespec t0;

static double elapsed(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9;
}

static const char *code_name(errcode_t code)
{
	size_t i;

	if (code == 0)
		return "OK";
	for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (codes[i].code == code)
			return codes[i].name;
	return "UNKNOWN";
}

/* Start a RESULT line; the caller adds fields and calls end_result(). */
static void begin_result(const char *op, const char *id, errcode_t code)
{
	printf("RESULT op=%s", op);
	if (id)
		printf(" id=%s", id);
	printf(" code=%ld name=%s t=%.3f", (long)code, code_name(code), elapsed());
}

static void end_result(errcode_t code)
{
	const char *msg = code ? error_message(code) : "";

	printf(" msg=\"%s\"\n", msg ? msg : "");
}

static void result(const char *op, const char *id, errcode_t code)
{
	begin_result(op, id, code);
	end_result(code);
}

static void on_bast(void *arg)
{
	struct bast_rec *rec = arg;

	if (rec < basts || rec >= basts + MAX_BASTS)
		return; /* not one of ours: counted nowhere */
	rec->calls++;
}

static struct bast_rec *find_bast(const char *id)
{
	int i;

	for (i = nbasts - 1; i >= 0; i--)
		if (!strcmp(basts[i].id, id))
			return &basts[i];
	return NULL;
}

static int parse_level(const char *s, enum o2dlm_lock_level *level)
{
	char *end;
	long v;

	if (!strcmp(s, "pr")) {
		*level = O2DLM_LEVEL_PRMODE;
		return 0;
	}
	if (!strcmp(s, "ex")) {
		*level = O2DLM_LEVEL_EXMODE;
		return 0;
	}
	v = strtol(s, &end, 0);
	if (*s == '\0' || *end != '\0')
		return -1;
	*level = (enum o2dlm_lock_level)v;
	return 0;
}

static int parse_flags(const char *s)
{
	if (!s)
		return 0;
	if (!strcmp(s, "try"))
		return O2DLM_TRYLOCK;
	return (int)strtol(s, NULL, 0);
}

static void hex_text(const char *buf, unsigned int n)
{
	unsigned int i;

	printf(" hex=");
	for (i = 0; i < n; i++)
		printf("%02x", (unsigned char)buf[i]);
	printf(" text=\"");
	for (i = 0; i < n && buf[i]; i++)
		putchar(buf[i] >= 0x20 && buf[i] < 0x7f && buf[i] != '"' ? buf[i] : '.');
	putchar('"');
}

static void list_domain(void)
{
	char path[4200];
	struct dirent *de;
	DIR *dir;
	int n = 0;

	snprintf(path, sizeof(path), "%s/%s", dlmfs_path, domain);
	dir = opendir(path);
	if (!dir) {
		printf("RESULT op=ls code=0 name=OK t=%.3f exists=0 errno=%d msg=\"\"\n", elapsed(), errno);
		return;
	}
	while ((de = readdir(dir))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		printf("ENTRY name=%s\n", de->d_name);
		n++;
	}
	closedir(dir);
	printf("RESULT op=ls code=0 name=OK t=%.3f exists=1 count=%d msg=\"\"\n", elapsed(), n);
}

/* Split "a:b:c" into at most max fields; the last one keeps any ':'. */
static int split(char *s, char **f, int max)
{
	int n = 0;

	f[n++] = s;
	while (n < max && (s = strchr(s, ':'))) {
		*s++ = '\0';
		f[n++] = s;
	}
	return n;
}

static int usage(const char *why)
{
	fprintf(stderr, "dlmfs_check: %s\n", why);
	return 2;
}

/* How many ':'-separated fields each step takes (the last keeps any ':'). */
static int nfields(const char *op)
{
	static const struct {
		const char *op;
		int n;
	} t[] = {
		{ "init", 1 }, { "lock", 3 }, { "bast", 3 }, { "waitbast", 2 },
		{ "processbast", 1 }, { "unlock", 1 }, { "drop", 1 }, { "writelvb", 2 },
		{ "readlvb", 2 }, { "caps", 0 }, { "destroy", 0 }, { "ls", 0 },
		{ "sleep", 1 }, { "mark", 1 }, { "touch", 1 }, { "waitfile", 2 },
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (!strcmp(t[i].op, op))
			return t[i].n;
	return 0;
}

static int step(char *arg)
{
	char *f[4] = { NULL, NULL, NULL, NULL };
	enum o2dlm_lock_level level;
	errcode_t ret;
	char *rest;
	int n = 1;

	f[0] = arg;
	rest = strchr(arg, ':');
	if (rest) {
		*rest++ = '\0';
		n += split(rest, &f[1], nfields(f[0]) ? nfields(f[0]) : 1);
	}
	if (!strcmp(f[0], "init") && n >= 2) {
		snprintf(domain, sizeof(domain), "%s", f[1]);
		ret = o2dlm_initialize(dlmfs_path, f[1], &ctx);
		if (ret)
			ctx = NULL;
		result("init", NULL, ret);
	} else if ((!strcmp(f[0], "lock") || !strcmp(f[0], "bast")) && n >= 3) {
		if (parse_level(f[2], &level))
			return usage("bad level");
		if (f[0][0] == 'l') {
			ret = o2dlm_lock(ctx, f[1], parse_flags(n >= 4 ? f[3] : NULL), level);
			result("lock", f[1], ret);
		} else {
			struct bast_rec *rec;
			int fd = -1;

			if (nbasts == MAX_BASTS)
				return usage("too many bast locks");
			rec = &basts[nbasts];
			memset(rec, 0, sizeof(*rec));
			snprintf(rec->id, sizeof(rec->id), "%s", f[1]);
			ret = o2dlm_lock_with_bast(ctx, f[1], parse_flags(n >= 4 ? f[3] : NULL),
						   level, on_bast, rec, &fd);
			rec->fd = ret ? -1 : fd;
			if (!ret)
				nbasts++;
			begin_result("bast", f[1], ret);
			printf(" fd_valid=%d", !ret && fd >= 0 && fcntl(fd, F_GETFD) != -1);
			end_result(ret);
		}
	} else if (!strcmp(f[0], "waitbast") && n >= 3) {
		struct bast_rec *rec = find_bast(f[1]);
		struct pollfd pfd;
		int rc, before;

		if (!rec)
			return usage("waitbast without bast");
		pfd.fd = rec->fd;
		pfd.events = POLLIN;
		pfd.revents = 0;
		rc = poll(&pfd, 1, (int)(atof(f[2]) * 1000));
		before = rec->calls;
		if (rc > 0 && (pfd.revents & POLLIN))
			o2dlm_process_bast(ctx, rec->fd);
		printf("RESULT op=waitbast id=%s code=0 name=OK t=%.3f readable=%d revents=0x%x calls_before=%d calls=%d msg=\"\"\n",
		       f[1], elapsed(), rc > 0 && (pfd.revents & POLLIN) ? 1 : 0, rc > 0 ? pfd.revents : 0,
		       before, rec->calls);
	} else if (!strcmp(f[0], "processbast") && n >= 2) {
		int i, total = 0;

		o2dlm_process_bast(ctx, atoi(f[1]));
		for (i = 0; i < nbasts; i++)
			total += basts[i].calls;
		printf("RESULT op=processbast code=0 name=OK t=%.3f calls=%d msg=\"\"\n", elapsed(), total);
	} else if (!strcmp(f[0], "unlock") && n >= 2) {
		result("unlock", f[1], o2dlm_unlock(ctx, f[1]));
	} else if (!strcmp(f[0], "drop") && n >= 2) {
		result("drop", f[1], o2dlm_drop_lock(ctx, f[1]));
	} else if (!strcmp(f[0], "writelvb") && n >= 3) {
		unsigned int done = 12345;

		ret = o2dlm_write_lvb(ctx, f[1], f[2], strlen(f[2]), &done);
		begin_result("writelvb", f[1], ret);
		if (!ret)
			printf(" bytes=%u", done);
		end_result(ret);
	} else if (!strcmp(f[0], "readlvb") && n >= 2) {
		unsigned int len = n >= 3 ? (unsigned int)atoi(f[2]) : 64, got = 12345;
		char buf[256];

		if (len > sizeof(buf))
			return usage("readlvb length too big");
		memset(buf, 0xee, sizeof(buf));
		ret = o2dlm_read_lvb(ctx, f[1], buf, len, &got);
		begin_result("readlvb", f[1], ret);
		if (!ret) {
			printf(" bytes=%u", got);
			hex_text(buf, got <= len ? got : len);
		}
		end_result(ret);
	} else if (!strcmp(f[0], "caps")) {
		int bast = -1, stackglue = -1;

		ret = o2dlm_supports_bast(&bast);
		begin_result("supports_bast", NULL, ret);
		printf(" value=%d", bast);
		end_result(ret);
		ret = o2dlm_supports_stackglue(&stackglue);
		begin_result("supports_stackglue", NULL, ret);
		printf(" value=%d", stackglue);
		end_result(ret);
	} else if (!strcmp(f[0], "destroy")) {
		ret = o2dlm_destroy(ctx);
		ctx = NULL;
		result("destroy", NULL, ret);
	} else if (!strcmp(f[0], "ls")) {
		list_domain();
	} else if (!strcmp(f[0], "sleep") && n >= 2) {
		usleep((useconds_t)(atof(f[1]) * 1e6));
		result("sleep", NULL, 0);
	} else if (!strcmp(f[0], "mark") && n >= 2) {
		printf("MARK %s t=%.3f\n", f[1], elapsed());
	} else if (!strcmp(f[0], "touch") && n >= 2) {
		FILE *fp;

		fp = fopen(f[1], "w");
		if (fp)
			fclose(fp);
		printf("RESULT op=touch code=0 name=OK t=%.3f ok=%d msg=\"\"\n", elapsed(), fp != NULL);
	} else if (!strcmp(f[0], "waitfile") && n >= 3) {
		double limit = elapsed() + atof(f[1]);
		int found;

		while (!(found = access(f[2], F_OK) == 0) && elapsed() < limit)
			usleep(50000);
		printf("RESULT op=waitfile code=0 name=OK t=%.3f found=%d msg=\"\"\n", elapsed(), found);
	} else {
		return usage("unknown step");
	}
	return 0;
}

int main(int argc, char **argv)
{
	int i = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	initialize_o2dl_error_table();
	if (argc > 2 && !strcmp(argv[1], "-p")) {
		dlmfs_path = argv[2];
		i = 3;
	}
	if (i >= argc)
		return usage("no steps");
	for (; i < argc; i++) {
		char *copy = strdup(argv[i]);
		int rc;

		if (!copy)
			return usage("out of memory");
		rc = step(copy);
		/* the bast records point at ids, not at this copy */
		free(copy);
		if (rc)
			return rc;
	}
	return 0;
}

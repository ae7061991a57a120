/*
 * api_use.c: a client of the whole libo2dlm API, written against
 * ocfs2-tools' <o2dlm/o2dlm.h>.
 *
 * The Makefile compiles this one file, unchanged, twice: against the
 * ocfs2-tools header (linked with the ocfs2-tools library) and against our
 * installed header found through pkg-config (linked with our library). Both
 * compilations use -Werror, and the function-pointer assignments below turn
 * any difference in a prototype into a compile error.
 *
 * At run time it exercises every call along paths whose result the original
 * library defines, checks each result, and prints a transcript; run.sh also
 * requires the two transcripts to be identical. Calls that need a context
 * run on a directory made to look like dlmfs by fakedlmfs.so (argv[1]);
 * with an empty argv[1] only the context-free part runs.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <o2dlm/o2dlm.h>

/* The constants of the header, as ocfs2-tools defines them. */
_Static_assert(O2DLM_LOCK_ID_MAX_LEN == 32, "O2DLM_LOCK_ID_MAX_LEN");
_Static_assert(O2DLM_DOMAIN_MAX_LEN == 255, "O2DLM_DOMAIN_MAX_LEN");
_Static_assert(O2DLM_MAX_FULL_DOMAIN_PATH == PATH_MAX + 1, "O2DLM_MAX_FULL_DOMAIN_PATH");
_Static_assert(O2DLM_TRYLOCK == 0x01, "O2DLM_TRYLOCK");
_Static_assert(O2DLM_VALID_FLAGS == O2DLM_TRYLOCK, "O2DLM_VALID_FLAGS");
_Static_assert(O2DLM_LEVEL_PRMODE == 0, "O2DLM_LEVEL_PRMODE");
_Static_assert(O2DLM_LEVEL_EXMODE == 1, "O2DLM_LEVEL_EXMODE");
_Static_assert(sizeof(errcode_t) == sizeof(long), "errcode_t is long");

/* Every prototype, exactly. */
static errcode_t (*const f_initialize)(const char *, const char *, struct o2dlm_ctxt **) =
	o2dlm_initialize;
static errcode_t (*const f_lock)(struct o2dlm_ctxt *, const char *, int,
				 enum o2dlm_lock_level) = o2dlm_lock;
static errcode_t (*const f_lock_with_bast)(struct o2dlm_ctxt *, const char *, int,
					   enum o2dlm_lock_level, void (*)(void *), void *,
					   int *) = o2dlm_lock_with_bast;
static errcode_t (*const f_unlock)(struct o2dlm_ctxt *, const char *) = o2dlm_unlock;
static errcode_t (*const f_drop_lock)(struct o2dlm_ctxt *, const char *) = o2dlm_drop_lock;
static errcode_t (*const f_read_lvb)(struct o2dlm_ctxt *, char *, char *, unsigned int,
				     unsigned int *) = o2dlm_read_lvb;
static errcode_t (*const f_write_lvb)(struct o2dlm_ctxt *, char *, const char *, unsigned int,
				      unsigned int *) = o2dlm_write_lvb;
static void (*const f_process_bast)(struct o2dlm_ctxt *, int) = o2dlm_process_bast;
static errcode_t (*const f_destroy)(struct o2dlm_ctxt *) = o2dlm_destroy;
static errcode_t (*const f_supports_bast)(int *) = o2dlm_supports_bast;
static errcode_t (*const f_supports_stackglue)(int *) = o2dlm_supports_stackglue;
static void (*const f_init_table)(void) = initialize_o2dl_error_table;

static int failures;

static void expect(const char *what, errcode_t got, errcode_t want)
{
	printf("%-44s %s\n", what, got ? error_message(got) : "ok");
	if (got != want) {
		printf("  FAIL: want %ld (%s), got %ld\n", (long)want,
		       want ? error_message(want) : "ok", (long)got);
		failures++;
	}
}

static void truth(const char *what, int ok)
{
	printf("%-44s %s\n", what, ok ? "yes" : "no");
	if (!ok) {
		printf("  FAIL: expected yes\n");
		failures++;
	}
}

static int bast_calls;
static void on_bast(void *arg)
{
	(void)arg;
	bast_calls++;
}

/* True when `dir` holds the private context lock: '.' + 16 hex digits. */
static int has_private_lock(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int found = 0;

	if (!d)
		return 0;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] == '.' && strlen(e->d_name) == 17 &&
		    strspn(e->d_name + 1, "0123456789abcdef") == 16)
			found++;
	closedir(d);
	return found == 1;
}

static void without_context(const char *scratch_file)
{
	static char longname[O2DLM_DOMAIN_MAX_LEN + 1];
	static char longpath[O2DLM_MAX_FULL_DOMAIN_PATH + 1];
	struct o2dlm_ctxt *ctxt = NULL;
	char lvb[64] = "x";
	unsigned int n = 0;
	int supports = -1;

	expect("supports_bast", f_supports_bast(&supports), 0);
	truth("supports_bast gives 0 or 1", supports == 0 || supports == 1);
	supports = -1;
	expect("supports_stackglue", f_supports_stackglue(&supports), 0);
	truth("supports_stackglue gives 0 or 1", supports == 0 || supports == 1);

	expect("destroy(NULL)", f_destroy(NULL), O2DLM_ET_INVALID_ARGS);
	expect("initialize: NULL domain", f_initialize("/proc", NULL, &ctxt), O2DLM_ET_INVALID_ARGS);
	expect("initialize: NULL ctxt", f_initialize("/proc", "d", NULL), O2DLM_ET_INVALID_ARGS);
	expect("initialize: missing path", f_initialize("/nonexistent/o2dlm", "d", &ctxt),
	       O2DLM_ET_OPEN_DLM_DIR);
	expect("initialize: path is a file", f_initialize(scratch_file, "d", &ctxt),
	       O2DLM_ET_NO_FS_DIR);
	expect("initialize: not dlmfs (/proc)", f_initialize("/proc", "d", &ctxt), O2DLM_ET_NO_FS);
	memset(longname, 'd', O2DLM_DOMAIN_MAX_LEN);
	expect("initialize: domain of 255 chars", f_initialize("/proc", longname, &ctxt),
	       O2DLM_ET_NAME_TOO_LONG);
	longname[O2DLM_DOMAIN_MAX_LEN - 1] = '\0';
	expect("initialize: domain of 254 chars", f_initialize("/proc", longname, &ctxt),
	       O2DLM_ET_NO_FS);
	/* path + domain may total O2DLM_MAX_FULL_DOMAIN_PATH (4097), not more;
	 * "////...": the root directory, which is not dlmfs. */
	memset(longpath, '/', O2DLM_MAX_FULL_DOMAIN_PATH - 5);
	longpath[O2DLM_MAX_FULL_DOMAIN_PATH - 5] = '\0';
	expect("initialize: path + domain = 4098", f_initialize(longpath, "domain", &ctxt),
	       O2DLM_ET_NAME_TOO_LONG);
	longpath[O2DLM_MAX_FULL_DOMAIN_PATH - 6] = '\0';
	expect("initialize: path + domain = 4097", f_initialize(longpath, "domain", &ctxt),
	       O2DLM_ET_NO_FS);
	truth("ctxt untouched by failures", ctxt == NULL);

	expect("lock: NULL ctxt", f_lock(NULL, "a", 0, O2DLM_LEVEL_PRMODE), O2DLM_ET_INVALID_ARGS);
	expect("unlock: NULL ctxt", f_unlock(NULL, "a"), O2DLM_ET_INVALID_ARGS);
	expect("drop_lock: NULL ctxt", f_drop_lock(NULL, "a"), O2DLM_ET_INVALID_ARGS);
	expect("read_lvb: NULL ctxt", f_read_lvb(NULL, "a", lvb, sizeof(lvb), &n),
	       O2DLM_ET_INVALID_ARGS);
	expect("write_lvb: NULL ctxt", f_write_lvb(NULL, "a", lvb, 1, &n), O2DLM_ET_INVALID_ARGS);
}

static void with_context(const char *root)
{
	char domdir[PATH_MAX], lvb[64], id31[O2DLM_LOCK_ID_MAX_LEN], id32[O2DLM_LOCK_ID_MAX_LEN + 1];
	struct o2dlm_ctxt *ctxt = NULL;
	struct stat st;
	unsigned int n;
	int fd = -1;

	snprintf(domdir, sizeof(domdir), "%s/apidom", root);
	expect("initialize on fake dlmfs", f_initialize(root, "apidom", &ctxt), 0);
	if (!ctxt) {
		failures++;
		return;
	}
	truth("domain directory created", stat(domdir, &st) == 0 && S_ISDIR(st.st_mode));
	truth("private .<16 hex> lock present", has_private_lock(domdir));

	memset(id31, 'i', sizeof(id31) - 1);
	id31[sizeof(id31) - 1] = '\0';
	memset(id32, 'i', sizeof(id32) - 1);
	id32[sizeof(id32) - 1] = '\0';

	expect("lock a EX", f_lock(ctxt, "a", 0, O2DLM_LEVEL_EXMODE), 0);
	expect("lock a again", f_lock(ctxt, "a", 0, O2DLM_LEVEL_EXMODE), O2DLM_ET_RECURSIVE_LOCK);
	expect("lock a again as PR trylock", f_lock(ctxt, "a", O2DLM_TRYLOCK, O2DLM_LEVEL_PRMODE),
	       O2DLM_ET_RECURSIVE_LOCK);
	expect("lock .reserved", f_lock(ctxt, ".reserved", 0, O2DLM_LEVEL_PRMODE),
	       O2DLM_ET_INVALID_LOCK_NAME);
	expect("lock id of 32 chars", f_lock(ctxt, id32, 0, O2DLM_LEVEL_PRMODE),
	       O2DLM_ET_INVALID_LOCK_NAME);
	expect("lock level 2", f_lock(ctxt, "b", 0, (enum o2dlm_lock_level)2),
	       O2DLM_ET_INVALID_LOCK_LEVEL);
	expect("lock level -1", f_lock(ctxt, "b", 0, (enum o2dlm_lock_level)-1),
	       O2DLM_ET_INVALID_LOCK_LEVEL);
	expect("lock id of 31 chars, PR trylock", f_lock(ctxt, id31, O2DLM_TRYLOCK, O2DLM_LEVEL_PRMODE),
	       0);
	expect("unlock id of 31 chars", f_unlock(ctxt, id31), 0);

	n = 77;
	expect("read_lvb before any write", f_read_lvb(ctxt, "a", lvb, sizeof(lvb), &n),
	       O2DLM_ET_LVB_INVALID);
	truth("bytes_read untouched", n == 77);
	n = 0;
	expect("write_lvb 5 bytes", f_write_lvb(ctxt, "a", "hello", 5, &n), 0);
	truth("bytes_written = 5", n == 5);
	expect("write_lvb, NULL bytes_written", f_write_lvb(ctxt, "a", "howdy", 5, NULL), 0);
	n = 0;
	memset(lvb, 0, sizeof(lvb));
	expect("read_lvb 64", f_read_lvb(ctxt, "a", lvb, sizeof(lvb), &n), 0);
	truth("read back 5 bytes \"howdy\"", n == 5 && memcmp(lvb, "howdy", 5) == 0);
	expect("read_lvb, NULL bytes_read", f_read_lvb(ctxt, "a", lvb, sizeof(lvb), NULL), 0);
	expect("read_lvb of a lock not held", f_read_lvb(ctxt, "zz", lvb, sizeof(lvb), &n),
	       O2DLM_ET_UNKNOWN_LOCK);
	expect("write_lvb of a lock not held", f_write_lvb(ctxt, "zz", "x", 1, &n),
	       O2DLM_ET_UNKNOWN_LOCK);

	expect("drop_lock a while held", f_drop_lock(ctxt, "a"), O2DLM_ET_BUSY_LOCK);
	expect("unlock zz (never locked)", f_unlock(ctxt, "zz"), O2DLM_ET_UNKNOWN_LOCK);
	expect("unlock a", f_unlock(ctxt, "a"), 0);
	expect("unlock a again", f_unlock(ctxt, "a"), O2DLM_ET_UNKNOWN_LOCK);
	expect("drop_lock a", f_drop_lock(ctxt, "a"), 0);
	expect("drop_lock a again", f_drop_lock(ctxt, "a"), O2DLM_ET_UNLINK);
	expect("lock a PR after drop", f_lock(ctxt, "a", 0, O2DLM_LEVEL_PRMODE), 0);

	/* No bast capability on a host without dlmfs. */
	expect("lock_with_bast without the capability",
	       f_lock_with_bast(ctxt, "w", 0, O2DLM_LEVEL_PRMODE, on_bast, NULL, &fd),
	       O2DLM_ET_BAST_UNSUPPORTED);
	f_process_bast(ctxt, 12345);
	f_process_bast(ctxt, -1);
	truth("process_bast on unknown fds calls nothing", bast_calls == 0);

	expect("lock q, left held for destroy", f_lock(ctxt, "q", 0, O2DLM_LEVEL_EXMODE), 0);
	expect("destroy", f_destroy(ctxt), 0);
	truth("domain directory removed", stat(domdir, &st) != 0 && errno == ENOENT);
}

int main(int argc, char **argv)
{
	struct stat st;

	if (argc != 3) {
		fprintf(stderr, "usage: %s <fake-dlmfs-root or \"\"> <a regular file>\n", argv[0]);
		return 2;
	}
	f_init_table();
	truth("argv[2] is a regular file", stat(argv[2], &st) == 0 && S_ISREG(st.st_mode));
	without_context(argv[2]);
	if (argv[1][0])
		with_context(argv[1]);
	printf("api_use: %d failures\n", failures);
	return failures ? 1 : 0;
}

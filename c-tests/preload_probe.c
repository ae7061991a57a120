/*
 * preload_probe.c: a program built against ocfs2-tools' header and linked
 * against a shared library made from Debian's real libo2dlm.a. run.sh runs
 * it as is and with LD_PRELOAD=<our libo2dlm.so>, and compares what it
 * prints to show which implementation answered:
 *
 *   provider  the object that defines the o2dlm_initialize the program calls
 *   engine    (`preload_probe engine`) o2dlm_initialize("/proc", ...) with
 *             O2DLM_BACKEND=engine set by run.sh, which only we read
 *   flags     (`preload_probe fake <root>`, under fakedlmfs.so) o2dlm_lock
 *             with an undefined flag bit (0x2): the original masks it off,
 *             we refuse it
 *   level     o2dlm_lock with level 5: both refuse it (same answer)
 *
 * O2DLM_LOG=debug (also set by run.sh) makes only our library write to stderr.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <o2dlm/o2dlm.h>

static const char *text(errcode_t err)
{
	return err ? error_message(err) : "ok";
}

int main(int argc, char **argv)
{
	struct o2dlm_ctxt *ctxt = NULL;
	void *sym = dlsym(RTLD_DEFAULT, "o2dlm_initialize");
	Dl_info info;
	errcode_t err;

	initialize_o2dl_error_table();
	if (sym && dladdr(sym, &info) && info.dli_fname)
		printf("provider %s\n", info.dli_fname);
	else
		printf("provider unknown\n");

	if (argc == 2) {
		printf("engine %s\n", text(o2dlm_initialize("/proc", "probe", &ctxt)));
		return 0;
	}
	if (argc == 3) {
		err = o2dlm_initialize(argv[2], "probe", &ctxt);
		printf("fake %s\n", text(err));
		if (err)
			return 1;
		printf("flags %s\n", text(o2dlm_lock(ctxt, "a", 0x2, O2DLM_LEVEL_PRMODE)));
		printf("level %s\n", text(o2dlm_lock(ctxt, "b", 0, (enum o2dlm_lock_level)5)));
		printf("destroy %s\n", text(o2dlm_destroy(ctxt)));
		return 0;
	}
	fprintf(stderr, "usage: %s engine | %s fake <fake-dlmfs-root>\n", argv[0], argv[0]);
	return 2;
}

/*
 * A small client of <o2dlm/o2dlm.h>, built with pkg-config against the
 * staged install by tools/demo.sh: shows that the drop-in library links and
 * answers like libo2dlm, and which backend it picked.
 */
#include <stdio.h>
#include <string.h>
#include <o2dlm/o2dlm.h>

int main(int argc, char **argv)
{
	const char *dlmfs = argc > 1 ? argv[1] : "/dlm";
	const char *domain = argc > 2 ? argv[2] : "demo";
	struct o2dlm_ctxt *ctxt = NULL;
	char lvb[64];
	unsigned int n = 0;
	int bast = 0;
	errcode_t ret;

	initialize_o2dl_error_table();

	ret = o2dlm_supports_bast(&bast);
	printf("supports_bast: %s (bast=%d)\n", error_message(ret), bast);

	ret = o2dlm_initialize(dlmfs, domain, &ctxt);
	printf("o2dlm_initialize(%s, %s): %ld %s\n", dlmfs, domain, (long)ret,
	       ret ? error_message(ret) : "ok");
	if (ret)
		return 0;

	ret = o2dlm_lock(ctxt, "demo-lock", 0, O2DLM_LEVEL_EXMODE);
	printf("lock EX: %s\n", ret ? error_message(ret) : "granted");
	strcpy(lvb, "hello from the demo");
	ret = o2dlm_write_lvb(ctxt, "demo-lock", lvb, sizeof(lvb), &n);
	printf("write_lvb: %s (%u bytes)\n", ret ? error_message(ret) : "ok", n);
	memset(lvb, 0, sizeof(lvb));
	ret = o2dlm_read_lvb(ctxt, "demo-lock", lvb, sizeof(lvb), &n);
	printf("read_lvb: %s \"%s\"\n", ret ? error_message(ret) : "ok", lvb);
	ret = o2dlm_unlock(ctxt, "demo-lock");
	printf("unlock: %s\n", ret ? error_message(ret) : "ok");
	ret = o2dlm_destroy(ctxt);
	printf("destroy: %s\n", ret ? error_message(ret) : "ok");
	return 0;
}

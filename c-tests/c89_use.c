/* c89_use.c: a strictly C89 client (built with -std=c89 -pedantic-errors).
 * ocfs2-tools' header is C89-clean; a drop-in header must be too. */
#include <stdio.h>
#include <o2dlm/o2dlm.h>

int main(void)
{
	struct o2dlm_ctxt *ctxt = NULL;
	enum o2dlm_lock_level level = O2DLM_LEVEL_EXMODE;
	errcode_t err;

	initialize_o2dl_error_table();
	err = o2dlm_initialize("/proc", "c89", &ctxt);
	printf("%s %d %d\n", error_message(err), (int)level, O2DLM_VALID_FLAGS);
	return err == O2DLM_ET_NO_FS ? 0 : 1;
}

// cxx_use.cc: a C++ client. ocfs2-tools' header has no extern "C" block,
// so C++ users wrap the include themselves; that must keep working.
extern "C" {
#include <o2dlm/o2dlm.h>
}
#include <cstdio>

int main()
{
	struct o2dlm_ctxt *ctxt = nullptr;
	int supports = -1;

	initialize_o2dl_error_table();
	errcode_t err = o2dlm_initialize("/proc", "cxx", &ctxt);
	std::printf("%s\n", error_message(err));
	return err == O2DLM_ET_NO_FS && o2dlm_supports_bast(&supports) == 0 ? 0 : 1;
}

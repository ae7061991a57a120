/*
 * err_table.c: prints, and checks, everything about the com_err table
 * "o2dl" that a program can observe: the O2DLM_ET_* macro values of the
 * header it was compiled with, the et_o2dl_error_table data object of the
 * library it was linked with, the texts error_message()/com_err() print
 * before and after initialize_o2dl_error_table(), and the registration
 * rules of initialize_o2dl_error_table() and its _r form.
 *
 * The same file is built three ways (see Makefile): ocfs2-tools header +
 * ocfs2-tools library, ocfs2-tools header + our library, our header + our
 * library. run.sh requires the three outputs to be byte-identical, and each
 * run must also pass the self-checks below (exit status 0).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <o2dlm/o2dlm.h>

/* The table's base as libo2dlm-abi.md §4.1 derives it from the name "o2dl". */
#define EXPECTED_BASE (-1485330944L)
#define EXPECTED_COUNT 32

/* libcom_err keeps registered tables on this list; the node layout is the
 * library's (next pointer, then table pointer) and is stable ABI. */
struct et_node {
	struct et_node *next;
	const struct error_table *table;
};
extern struct et_node *_et_list;

#define CODE(sym) { #sym, sym }
static const struct {
	const char *name;
	long value;
} codes[] = {
	CODE(O2DLM_ET_NO_MEMORY),         CODE(O2DLM_ET_SERVICE_UNAVAILABLE),
	CODE(O2DLM_ET_INVALID_LOCK_NAME), CODE(O2DLM_ET_INVALID_LOCK_LEVEL),
	CODE(O2DLM_ET_INTERNAL_FAILURE),  CODE(O2DLM_ET_NAME_TOO_LONG),
	CODE(O2DLM_ET_STATFS),            CODE(O2DLM_ET_NO_FS_DIR),
	CODE(O2DLM_ET_NO_FS),             CODE(O2DLM_ET_OPEN_DLM_DIR),
	CODE(O2DLM_ET_NO_DOMAIN_DIR),     CODE(O2DLM_ET_BAD_DOMAIN_DIR),
	CODE(O2DLM_ET_BUSY_DOMAIN_DIR),   CODE(O2DLM_ET_DOMAIN_DIR),
	CODE(O2DLM_ET_DOMAIN_DESTROY),    CODE(O2DLM_ET_DOMAIN_CREATE),
	CODE(O2DLM_ET_RANDOM),            CODE(O2DLM_ET_BUSY_LOCK),
	CODE(O2DLM_ET_OUTPUT_ERROR),      CODE(O2DLM_ET_UNLINK),
	CODE(O2DLM_ET_UNKNOWN_LOCK),      CODE(O2DLM_ET_RECURSIVE_LOCK),
	CODE(O2DLM_ET_LOCKING),           CODE(O2DLM_ET_FAILED_UNLOCKS),
	CODE(O2DLM_ET_INVALID_ARGS),      CODE(O2DLM_ET_TRYLOCK_FAILED),
	CODE(O2DLM_ET_LVB_READ),          CODE(O2DLM_ET_LVB_WRITE),
	CODE(O2DLM_ET_SEEK),              CODE(O2DLM_ET_DOMAIN_BUSY),
	CODE(O2DLM_ET_BAST_UNSUPPORTED),  CODE(O2DLM_ET_LVB_INVALID),
};
#define NCODES ((int)(sizeof(codes) / sizeof(codes[0])))

static int failures;

static void check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "err_table: CHECK FAILED: %s\n", what);
		failures++;
	}
}

static int count_nodes(struct et_node *list, const struct error_table *t)
{
	int n = 0;

	for (; list; list = list->next)
		if (list->table == t)
			n++;
	return n;
}

int main(void)
{
	const struct error_table *t = &et_o2dl_error_table;
	struct et_list *priv = NULL;
	int i;

	printf("macro ERROR_TABLE_BASE_o2dl %ld\n", (long)ERROR_TABLE_BASE_o2dl);
	printf("macro o2dl_err_base %ld\n", (long)o2dl_err_base);
	check(ERROR_TABLE_BASE_o2dl == EXPECTED_BASE, "ERROR_TABLE_BASE_o2dl value");
	check(o2dl_err_base == EXPECTED_BASE, "o2dl_err_base value");
	check(NCODES == EXPECTED_COUNT, "32 codes");

	/* Every macro: value, and index = value - base. */
	for (i = 0; i < NCODES; i++) {
		printf("code %2d %-28s %ld\n", i, codes[i].name, codes[i].value);
		check(codes[i].value == EXPECTED_BASE + i, "code = base + index");
		check(sizeof(O2DLM_ET_NO_MEMORY) == sizeof(long), "codes are long");
	}

	/* Before registration libcom_err knows nothing about the table. */
	for (i = 0; i < NCODES; i++)
		printf("before %2d %s\n", i, error_message(codes[i].value));
	check(count_nodes(_et_list, t) == 0, "not registered before init");

	/* The data object the library exports. */
	printf("table base %ld n_msgs %d terminator %s\n", t->base, t->n_msgs,
	       t->msgs[t->n_msgs] ? "non-NULL" : "NULL");
	check(t->base == EXPECTED_BASE, "et_o2dl_error_table.base");
	check(t->n_msgs == EXPECTED_COUNT, "et_o2dl_error_table.n_msgs");
	check(t->msgs[t->n_msgs] == NULL, "msgs NULL-terminated");

	/* Registration, twice: one node only. */
	initialize_o2dl_error_table();
	init_o2dl_err_tbl();
	printf("registered nodes %d\n", count_nodes(_et_list, t));
	check(count_nodes(_et_list, t) == 1, "registered exactly once");

	for (i = 0; i < NCODES; i++) {
		const char *msg = error_message(codes[i].value);

		printf("message %2d %s\n", i, msg);
		check(t->msgs[i] && strcmp(msg, t->msgs[i]) == 0,
		      "error_message = table entry");
	}
	/* Past the end of the table, and a code of no table at all. */
	printf("beyond %s\n", error_message(EXPECTED_BASE + EXPECTED_COUNT));
	printf("beyond %s\n", error_message(EXPECTED_BASE + 255));
	printf("zero %s\n", error_message(0));

	/* The Heimdal-style variant fills a private list, once. */
	initialize_o2dl_error_table_r(&priv);
	initialize_o2dl_error_table_r(&priv);
	printf("private nodes %d\n", count_nodes((struct et_node *)priv, t));
	check(count_nodes((struct et_node *)priv, t) == 1, "_r registers once");
	for (i = 0; i < NCODES; i++) {
		const char *msg = com_right(priv, codes[i].value);

		printf("com_right %2d %s\n", i, msg ? msg : "(null)");
		check(msg && strcmp(msg, t->msgs[i]) == 0, "com_right = table entry");
	}
	check(count_nodes(_et_list, t) == 1, "_r leaves the global list alone");

	/* com_err() prints "<who>: <message> <text>" on stderr; send it to
	 * stdout so that it is compared too. */
	fflush(stdout);
	fflush(stderr);
	if (dup2(STDOUT_FILENO, STDERR_FILENO) < 0)
		check(0, "redirect stderr");
	com_err("err_table", O2DLM_ET_LOCKING, "while %s", "testing");
	com_err("err_table", O2DLM_ET_LVB_INVALID, "(%d)", 31);
	fflush(stderr);

	if (failures)
		printf("FAILED %d checks\n", failures);
	return failures ? 1 : 0;
}

/*
 * fakedlmfs.so: an LD_PRELOAD test shim that makes one ordinary directory
 * look like the root of an ocfs2_dlmfs mount.
 *
 * Both libo2dlm implementations decide "is this dlmfs?" with one fstatfs()
 * on the directory they were given. This shim wraps fstatfs()/statfs() and,
 * when the directory is the one named by FAKE_DLMFS_ROOT, reports the dlmfs
 * magic number. Everything else (mkdir, open, read, write, unlink, rmdir)
 * then runs on the plain file system underneath, which is enough to exercise
 * argument checking and the library's own bookkeeping on a host without
 * dlmfs. It does NOT emulate cluster locking: two opens of one lock file
 * never conflict here. Real dlmfs behaviour is tested in kernel VMs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#define DLMFS_MAGIC 0x76a9f425

/* True when `path` (already resolved) is the fake root. */
static int is_fake_root(const char *path)
{
	const char *root = getenv("FAKE_DLMFS_ROOT");
	char want[PATH_MAX];

	if (!root || !*root || !realpath(root, want))
		return 0;
	return strcmp(path, want) == 0;
}

static int fd_is_fake_root(int fd)
{
	char link[64], target[PATH_MAX];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return 0;
	target[n] = '\0';
	return is_fake_root(target);
}

static int path_is_fake_root(const char *path)
{
	char resolved[PATH_MAX];

	return path && realpath(path, resolved) && is_fake_root(resolved);
}

typedef int (*fstatfs_fn)(int, struct statfs *);
typedef int (*statfs_fn)(const char *, struct statfs *);

int fstatfs(int fd, struct statfs *buf)
{
	fstatfs_fn next = (fstatfs_fn)dlsym(RTLD_NEXT, "fstatfs");
	int ret = next(fd, buf);

	if (ret == 0 && fd_is_fake_root(fd))
		buf->f_type = DLMFS_MAGIC;
	return ret;
}

typedef int (*fstatfs64_fn)(int, struct statfs64 *);
typedef int (*statfs64_fn)(const char *, struct statfs64 *);

int fstatfs64(int fd, struct statfs64 *buf)
{
	fstatfs64_fn next = (fstatfs64_fn)dlsym(RTLD_NEXT, "fstatfs64");
	int ret = next(fd, buf);

	if (ret == 0 && fd_is_fake_root(fd))
		buf->f_type = DLMFS_MAGIC;
	return ret;
}

int statfs(const char *path, struct statfs *buf)
{
	statfs_fn next = (statfs_fn)dlsym(RTLD_NEXT, "statfs");
	int ret = next(path, buf);

	if (ret == 0 && path_is_fake_root(path))
		buf->f_type = DLMFS_MAGIC;
	return ret;
}

int statfs64(const char *path, struct statfs64 *buf)
{
	statfs64_fn next = (statfs64_fn)dlsym(RTLD_NEXT, "statfs64");
	int ret = next(path, buf);

	if (ret == 0 && path_is_fake_root(path))
		buf->f_type = DLMFS_MAGIC;
	return ret;
}

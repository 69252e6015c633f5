/* The benchmark's floor: the least work that makes (or confirms) the benchmark's tree, with no
 * safety at all. bench/run builds it static (gcc -static -O2) and runs it on the same tree as
 * persist-prep and systemd-tmpfiles.
 *
 *   floor create LIST   per line "KIND MODE UID GID PATH" (parents before children, each once):
 *                       mkdir(PATH, MODE), chown(PATH, UID, GID), chmod(PATH, MODE). No lookup
 *                       first, no symlink checks, no handles.
 *   floor check LIST    the minimal honest no-op: one lstat per declared directory (KIND "E":
 *                       an entry's source or mount point), comparing type, owner and mode. Parents
 *                       (KIND "P") are not looked at: an entry that exists proves its parents do,
 *                       and an existing parent is never changed by any of the tools.
 * PATH is relative to the current directory (bench/run starts it in the tree's root). Exit 0 when
 * everything was done or as listed, 1 otherwise, 2 on bad usage or input.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return NULL;
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0)
            return NULL;
        got += (size_t)n;
    }
    close(fd);
    if (buf)
        buf[got] = '\0';
    *len = got;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "create") != 0 && strcmp(argv[1], "check") != 0)) {
        fprintf(stderr, "usage: floor create|check LIST\n");
        return 2;
    }
    int create = strcmp(argv[1], "create") == 0, bad = 0;
    size_t len;
    char *buf = slurp(argv[2], &len), *line, *save = NULL;
    if (!buf) {
        fprintf(stderr, "floor: cannot read %s: %s\n", argv[2], strerror(errno));
        return 2;
    }
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char kind;
        unsigned mode, uid, gid;
        int off = 0;
        if (sscanf(line, "%c %o %u %u %n", &kind, &mode, &uid, &gid, &off) != 4 || !off)
            return 2;
        const char *path = line + off;
        if (create) {
            if (mkdir(path, mode) != 0 || chown(path, uid, gid) != 0 || chmod(path, mode) != 0) {
                fprintf(stderr, "floor: %s: %s\n", path, strerror(errno));
                bad = 1;
            }
        } else if (kind == 'E') {
            struct stat st;
            if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || (st.st_mode & 07777) != mode ||
                st.st_uid != uid || st.st_gid != gid) {
                fprintf(stderr, "floor: %s: not as listed\n", path);
                bad = 1;
            }
        }
    }
    return bad;
}

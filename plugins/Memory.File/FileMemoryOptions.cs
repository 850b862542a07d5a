using System.ComponentModel;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Memory.Shared;

namespace Vism.Memory.File;

/// <summary>Options of the <c>file</c> memory plugin, bound from <c>[device.memory]</c>.</summary>
public sealed class FileMemoryOptions : IValidatableOptions
{
    /// <summary>Directory of the region files. A relative path is taken inside the host's state directory.</summary>
    [Description("Directory of the region files (tmpfs or disk). A relative path is taken inside the host's state directory. Created (mode 0700) if missing.")]
    public string Directory { get; set; } = "/dev/shm/vism";

    /// <summary>Start of every region file's name; the device name and the token follow.</summary>
    [Description("Start of every region file's name; the device name and the token follow.")]
    public string Prefix { get; set; } = "vism-";

    /// <summary>Most bytes this device's regions may hold at once; 0 means the REGIONS window size.</summary>
    [Description("Most bytes this device's regions may hold at once; 0 = the size of the REGIONS window.")]
    public ulong Capacity { get; set; }

    /// <summary>Whether regions survive a host restart (their files stay in <see cref="Directory"/>).</summary>
    [Description("Keep each region in a named file so a restarted host finds its token and contents again. On tmpfs that survives a host restart, on a disk also a reboot.")]
    public bool Persist { get; set; }

    /// <summary>The directory as an absolute path (relative ones are resolved against the state
    /// directory, <see cref="HostPaths"/>).</summary>
    /// <param name="host">The host, for its state directory.</param>
    /// <returns>The absolute directory.</returns>
    public string ResolveDirectory(HostDescription host) => host.State(Directory);

    /// <inheritdoc />
    public void Validate(OptionsValidationContext context)
    {
        ulong pageSize = (ulong)Environment.SystemPageSize;
        OptionRules.RegionSize(context, pageSize, "system");
        OptionRules.Capacity(context, Capacity, pageSize);
        OptionRules.Prefix(context, Prefix);
        if (string.IsNullOrWhiteSpace(Directory) || Directory.Contains('\0'))
        {
            context.Error("directory", "must name a directory, e.g. \"/dev/shm/vism\" (tmpfs) or \"regions\" (inside the state directory)");
            return;
        }
        string? problem = RegionDirectory.Check(ResolveDirectory(context.Host));
        if (problem is not null) context.Error("directory", problem);
    }
}

/// <summary>Checks and prepares the directory region files live in.</summary>
internal static class RegionDirectory
{
    /// <summary>Why <paramref name="path"/> cannot hold this process's region files, or null.
    /// A missing directory is fine when it can be created. The directory (or, when missing, the
    /// directory it would be created in) must be on tmpfs or a disk file system and writable.</summary>
    public static string? Check(string path)
    {
        if (Syscall.lstat(path, out Stat st) == 0)
        {
            FilePermissions type = st.st_mode & FilePermissions.S_IFMT;
            if (type == FilePermissions.S_IFLNK)
                return $"{path} is a symbolic link; name the directory itself (a link in a shared directory such as /dev/shm could point anywhere)";
            if (type != FilePermissions.S_IFDIR)
                return $"{path} exists and is not a directory";
            uint me = Posix.EffectiveUserId;
            if (st.st_uid != me)
                return $"{path} belongs to uid {st.st_uid}, not to this process (uid {me}); another user could read or replace its regions";
            return CheckFileSystem(path, path) ?? CheckWritable(path, $"{path} is not writable");
        }
        string? parent = Path.GetDirectoryName(path);
        while (parent is not null && !System.IO.Directory.Exists(parent) && !System.IO.File.Exists(parent))
            parent = Path.GetDirectoryName(parent);
        if (parent is null || !System.IO.Directory.Exists(parent))
            return $"{path} cannot be created: {parent ?? "/"} is not a directory";
        return CheckFileSystem(path, parent) ?? CheckWritable(parent, $"{path} cannot be created: {parent} is not writable");
    }

    /// <summary>Creates <paramref name="path"/> (mode 0700) if missing and checks it.</summary>
    public static void Prepare(string path)
    {
        if (!System.IO.Directory.Exists(path))
            System.IO.Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        string? problem = Check(path);
        if (problem is not null) throw new InvalidOperationException(problem);
    }

    /// <summary>Refuses a file system that cannot hold regions: a pseudo file system (/proc, /sys),
    /// one whose files must be huge pages (hugetlbfs), a network or FUSE file system whose
    /// fallocate may not claim anything, or a read-only mount.</summary>
    /// <param name="path">The configured directory (for the message).</param>
    /// <param name="existing">The directory itself, or the nearest existing one above it.</param>
    private static string? CheckFileSystem(string path, string existing)
    {
        if (!Posix.TryStatFs(existing, out Posix.StatFs fs))
            return $"{path}: statfs({existing}) failed: {Posix.Describe(Posix.LastError)}";
        string where = existing == path ? $"{path} is on" : $"{path} would be created in {existing}, which is on";
        if (fs.Type == Posix.HugetlbfsMagic)
            return $"{where} hugetlbfs, whose files hold only whole huge pages; use kind = \"hugetlb\" with mount = \"{existing}\", or a directory on tmpfs such as /dev/shm/vism";
        if (!FileSystems.IsAccepted(fs.Type))
            return $"{where} {FileSystems.Name(fs.Type)}, not on tmpfs or a disk file system ({FileSystems.AcceptedNames}); use e.g. /dev/shm/vism (tmpfs) or a directory on a local disk";
        if ((fs.Flags & Posix.ST_RDONLY) != 0)
            return $"{where} a read-only mount";
        return null;
    }

    private static string? CheckWritable(string directory, string problem) =>
        Syscall.access(directory, AccessModes.W_OK | AccessModes.X_OK) != 0
            ? $"{problem}: {Posix.Describe(Stdlib.GetLastError())}"
            : null;
}

/// <summary>The file systems region files may live on, by statfs f_type (linux/magic.h): tmpfs
/// and local disk file systems, which claim space with fallocate and punch holes.</summary>
internal static class FileSystems
{
    private static readonly Dictionary<long, string> Accepted = new()
    {
        [Posix.TmpfsMagic] = "tmpfs",
        [0xEF53] = "ext2/3/4",
        [0x58465342] = "xfs",
        [0x9123683E] = "btrfs",
        [0xF2F52010] = "f2fs",
        [0xCA451A4E] = "bcachefs",
        [0x794C7630] = "overlayfs",
    };

    private static readonly Dictionary<long, string> Refused = new()
    {
        [0x9FA0] = "proc",
        [0x62656572] = "sysfs",
        [0x1CD1] = "devpts",
        [0x27E0EB] = "cgroup",
        [0x63677270] = "cgroup2",
        [0x64626720] = "debugfs",
        [0x74726163] = "tracefs",
        [0x73636673] = "securityfs",
        [0xCAFE4A11] = "bpf",
        [0x62656570] = "configfs",
        [0x6165676C] = "pstore",
        [0xDE5E81E4] = "efivarfs",
        [0x19800202] = "mqueue",
        [0x858458F6] = "ramfs",
        [0x6969] = "nfs",
        [0x65735546] = "fuse",
        [0xFE534D42] = "smb2",
        [0xFF534D42] = "cifs",
        [0x01021997] = "9p",
        [0x73717368] = "squashfs",
        [0x9660] = "iso9660",
        [0x4D44] = "vfat",
        [0x2FC12FC1] = "zfs",
    };

    /// <summary>The accepted file systems, for messages.</summary>
    public static string AcceptedNames => string.Join(", ", Accepted.Values);

    public static bool IsAccepted(long type) => Accepted.ContainsKey(type);

    /// <summary>A file system's name, or its magic number when unknown.</summary>
    public static string Name(long type) =>
        Accepted.TryGetValue(type, out string? name) || Refused.TryGetValue(type, out name) ? name : $"a file system of type 0x{type:x}";
}

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

    /// <summary>The directory as an absolute path (relative ones are resolved against the state directory).</summary>
    /// <param name="host">The host, for its state directory.</param>
    /// <returns>The absolute directory.</returns>
    public string ResolveDirectory(HostDescription host) =>
        Path.GetFullPath(Directory, Path.GetFullPath(host.StateDirectory));

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
    /// A missing directory is fine when it can be created.</summary>
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
            if (Syscall.access(path, AccessModes.W_OK | AccessModes.X_OK) != 0)
                return $"{path} is not writable: {Posix.Describe(Stdlib.GetLastError())}";
            return null;
        }
        string? parent = Path.GetDirectoryName(path);
        while (parent is not null && !System.IO.Directory.Exists(parent) && !System.IO.File.Exists(parent))
            parent = Path.GetDirectoryName(parent);
        if (parent is null || !System.IO.Directory.Exists(parent))
            return $"{path} cannot be created: {parent ?? "/"} is not a directory";
        if (Syscall.access(parent, AccessModes.W_OK | AccessModes.X_OK) != 0)
            return $"{path} cannot be created: {parent} is not writable ({Posix.Describe(Stdlib.GetLastError())})";
        return null;
    }

    /// <summary>Creates <paramref name="path"/> (mode 0700) if missing and checks it.</summary>
    public static void Prepare(string path)
    {
        if (!System.IO.Directory.Exists(path))
            System.IO.Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        string? problem = Check(path);
        if (problem is not null) throw new InvalidOperationException(problem);
    }
}

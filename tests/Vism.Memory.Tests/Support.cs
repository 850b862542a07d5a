using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;
using Vism.Testing;

// File descriptor counts, tmpfs space and the huge page pool are process- or machine-wide:
// tests that measure them must not run next to tests that change them.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Vism.Memory.Tests;

internal static class Devices
{
    public const ulong MiB = 1UL << 20;

    public static DeviceDescription Make(string name = "dev0", ulong regionSize = MiB, int maxRegions = 64) => new()
    {
        Name = name,
        RegionSize = regionSize,
        NotifySize = 1,
        MaxRegions = maxRegions,
        RegionsWindowSize = regionSize * (ulong)maxRegions,
        NotifyWindowSize = 4096,
    };

    public static HostDescription Host(string stateDirectory = "/var/lib/vism") => new()
    {
        Gid = 1,
        StateDirectory = stateDirectory,
        SocketDirectory = "/run/vism",
    };
}

/// <summary>The device counters a backend writes to (thread-safe, like the real ones).</summary>
internal sealed class Counters : IDeviceCounters
{
    private readonly ConcurrentDictionary<string, long> _values = new();

    public void Increment(string name, long by = 1) => _values.AddOrUpdate(name, by, (_, v) => v + by);

    public long Get(string name) => _values.GetValueOrDefault(name);

    public long Sum(string prefix) => _values.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).Sum(kv => kv.Value);
}

/// <summary>Collects what an options object reports, as the host would.</summary>
internal sealed class Validation(DeviceDescription device, HostDescription host) : OptionsValidationContext
{
    public List<(string Key, string Message)> Errors { get; } = [];

    public override DeviceDescription Device => device;

    public override HostDescription Host => host;

    public override void Error(string key, string message) => Errors.Add((key, message));

    public override void DeviceError(string key, string message) => Errors.Add(("device." + key, message));

    public override void ClaimEndpoint(string key, string endpoint) { }

    public static List<(string Key, string Message)> Run(IValidatableOptions options, DeviceDescription? device = null, HostDescription? host = null)
    {
        var v = new Validation(device ?? Devices.Make(), host ?? Devices.Host());
        options.Validate(v);
        return v.Errors;
    }
}

/// <summary>A private tmpfs or hugetlbfs mount (root only), so space can be measured exactly and
/// filled without touching what other processes use.</summary>
internal sealed class PrivateMount : IDisposable
{
    private readonly TempDir _dir = new("vism-mnt");

    private PrivateMount(string type, string options)
    {
        Path = _dir.Path;
        Run("mount", "-t", type, "-o", options, "none", Path);
    }

    public string Path { get; }

    public static PrivateMount Tmpfs(ulong size, bool readOnly = false)
    {
        Skip.IfNot(Machine.IsRoot, "mounting a private tmpfs needs root");
        return new PrivateMount("tmpfs", $"size={size},mode=0700" + (readOnly ? ",ro" : ""));
    }

    /// <param name="size">The mount's own limit in bytes; 0 for none (only the pool limits it).</param>
    public static PrivateMount Hugetlbfs(ulong pageSize, ulong size)
    {
        Skip.IfNot(Machine.IsRoot, "mounting a private hugetlbfs needs root");
        return new PrivateMount("hugetlbfs", $"pagesize={pageSize >> 20}M,mode=0700" + (size != 0 ? $",size={size}" : ""));
    }

    /// <summary>Bytes in use on the mount (statvfs).</summary>
    public ulong Used
    {
        get
        {
            if (Syscall.statvfs(Path, out Statvfs s) != 0) throw PosixException.FromLastError("statvfs");
            return (s.f_blocks - s.f_bfree) * s.f_frsize;
        }
    }

    public void Dispose()
    {
        Run("umount", "-l", Path);
        _dir.Dispose();
    }

    private static void Run(string file, params string[] args)
    {
        using Process p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true })!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)}: {err}");
    }
}

internal static class Blocks
{
    /// <summary>One allocation and release first, so that what the runtime opens on first use
    /// (it maps Mono.Posix lazily) is open before descriptors are counted.</summary>
    public static void WarmUp(IMemoryBackend backend)
    {
        IMemoryBlock block = backend.TryAllocate(backend.PageSize, ulong.MaxValue, out Refusal failure)
            ?? throw new InvalidOperationException(failure.Detail);
        block.Release();
        block.Dispose();
    }

    /// <summary>Maps the whole block as a transport's peer would (MAP_SHARED of its fd at its offset).</summary>
    public static Mapping Map(IMemoryBlock block, SafeFileHandle? fd = null) =>
        Mapping.Map(fd ?? block.Handle, block.Offset, block.Length);

    /// <summary>Bytes the kernel has allocated to the file behind a descriptor (st_blocks).</summary>
    public static ulong Allocated(SafeFileHandle fd)
    {
        PosixException.Check(Syscall.fstat(Fd.Raw(fd), out Stat st), "fstat");
        return (ulong)st.st_blocks * 512;
    }

    public static unsafe bool IsZero(Mapping m)
    {
        var span = new ReadOnlySpan<byte>((void*)m.Address, checked((int)m.Length));
        return !span.ContainsAnyExcept((byte)0);
    }

    /// <summary>Writes a pattern derived from <paramref name="seed"/> at the start of every page.</summary>
    public static unsafe void Stamp(Mapping m, byte seed, ulong pageSize = 4096)
    {
        for (ulong o = 0; o < m.Length; o += pageSize)
            *(byte*)(m.Address + (nint)o) = (byte)(seed + o / pageSize);
    }

    public static unsafe bool HasStamp(Mapping m, byte seed, ulong pageSize = 4096)
    {
        for (ulong o = 0; o < m.Length; o += pageSize)
            if (*(byte*)(m.Address + (nint)o) != (byte)(seed + o / pageSize)) return false;
        return true;
    }
}

/// <summary>The huge page pool of one size as the kernel reports it (sysfs).</summary>
/// <param name="Free">HugePages_Free: pages no file holds (reserved ones included).</param>
/// <param name="Reserved">HugePages_Rsvd: free pages promised to files by reservations.</param>
internal readonly record struct PoolState(long Free, long Reserved)
{
    public static PoolState Now(ulong pageSize = 2 << 20) =>
        new(Machine.FreeHugePages(pageSize), Machine.ReservedHugePages(pageSize));

    public override string ToString() => $"free {Free}, reserved {Reserved}";
}

/// <summary>The pool is machine-wide: another process may move it while a test measures. A
/// measurement runs again (up to 5 times) when what it saw does not hold; each attempt cleans up
/// after itself and returns null when its expectations held, otherwise what it saw.</summary>
internal static class MachineWide
{
    public static void Measure(Func<string?> attempt)
    {
        var seen = new List<string>();
        for (int i = 0; i < 5; i++)
        {
            string? problem = attempt();
            if (problem is null) return;
            seen.Add(problem);
        }
        Assert.Fail("the huge page pool did not behave as expected in 5 attempts: " + string.Join("; ", seen));
    }
}

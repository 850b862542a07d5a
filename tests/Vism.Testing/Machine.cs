using Xunit;
namespace Vism.Testing;

/// <summary>
/// What the machine can do for a test, and preparing it when we are root. A test that needs
/// something calls the matching Require* method: it returns when the resource is there (preparing
/// it as root) and otherwise skips the test with a message saying why and how to fix it.
/// </summary>
public static class Machine
{
    private static readonly Lock HugeLock = new();

    public static bool IsRoot => Environment.UserName == "root" || GetEuid() == 0;

    /// <summary>Ensures at least <paramref name="freePages"/> available huge pages of <paramref name="pageSize"/>
    /// (free and not reserved by some mapping; growing the pool as root), else skips.</summary>
    public static void RequireHugePages(int freePages, ulong pageSize = 2 << 20)
    {
        string? reason = EnsureHugePages(freePages, pageSize);
        Skip.If(reason is not null, reason);
    }

    /// <summary>Returns null when <paramref name="freePages"/> huge pages are available (free and not
    /// reserved by a mapping; after growing the pool as root), otherwise why not.</summary>
    public static string? EnsureHugePages(int freePages, ulong pageSize = 2 << 20)
    {
        string dir = $"/sys/kernel/mm/hugepages/hugepages-{pageSize / 1024}kB";
        if (!Directory.Exists(dir))
            return $"this kernel has no {pageSize / 1024} kB huge pages ({dir} is missing)";
        lock (HugeLock)
        {
            long free = AvailableHugePages(pageSize);
            if (free >= freePages) return null;
            if (!IsRoot)
                return $"needs {freePages} available {pageSize >> 20} MiB huge pages, {free} available; as root: echo {freePages} > {dir}/nr_hugepages";
            long total = ReadLong(Path.Combine(dir, "nr_hugepages"));
            File.WriteAllText(Path.Combine(dir, "nr_hugepages"), (total + freePages - free).ToString());
            free = AvailableHugePages(pageSize);
            return free >= freePages ? null
                : $"asked the kernel for {freePages} available {pageSize >> 20} MiB huge pages and got {free} (memory too fragmented?)";
        }
    }

    /// <summary>Free huge pages of the given size right now (HugePages_Free: no file holds them; some may be reserved).</summary>
    public static long FreeHugePages(ulong pageSize = 2 << 20) =>
        ReadLong($"/sys/kernel/mm/hugepages/hugepages-{pageSize / 1024}kB/free_hugepages");

    /// <summary>Free huge pages promised to files by reservations right now (HugePages_Rsvd).</summary>
    public static long ReservedHugePages(ulong pageSize = 2 << 20) =>
        ReadLong($"/sys/kernel/mm/hugepages/hugepages-{pageSize / 1024}kB/resv_hugepages");

    /// <summary>Free huge pages nobody has reserved: what a new mapping or allocation can still get.</summary>
    public static long AvailableHugePages(ulong pageSize = 2 << 20) =>
        FreeHugePages(pageSize) - ReservedHugePages(pageSize);

    /// <summary>The QEMU 11.1 root prepared by scripts/setup-qemu.sh, or null with a skip.</summary>
    public static string QemuRoot
    {
        get
        {
            string root = Environment.GetEnvironmentVariable("VISM_QEMU_ROOT") ?? "/var/cache/vism/trixie";
            Skip.IfNot(File.Exists(Path.Combine(root, ".vism-ready")),
                $"QEMU 11.1 is not prepared in {root}: run scripts/setup-qemu.sh as root (the README's test command does)");
            return root;
        }
    }

    private static long ReadLong(string path) => File.Exists(path) && long.TryParse(File.ReadAllText(path).Trim(), out long v) ? v : 0;

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "geteuid")]
    private static extern uint GetEuid();
}

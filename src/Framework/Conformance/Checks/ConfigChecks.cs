using Vism.Abstractions;
using Vism.Conformance.Composition;

namespace Vism.Conformance.Checks;

/// <summary>Config space: gid, devid, region_size, notify_size and the windows.</summary>
internal static class ConfigChecks
{
    private const string ConfigSection = "Device configuration layout, device normative";

    /// <summary>The v1 text's <c>struct virtio_ism_config</c>: four <c>le64</c> fields in this order
    /// (gid, devid, region_size, notify_size), so at byte offsets 0, 8, 16 and 24. Written here from
    /// the spec, not taken from the device or the Driver, which have their own constants.</summary>
    private const uint V1Gid = 0, V1DevId = 8, V1RegionSize = 16, V1NotifySize = 24;

    /// <summary>The alignment a Linux driver needs to map a window as kernel pages (x86-64
    /// <c>devm_memremap_pages</c>: "Misaligned __add_pages" otherwise).</summary>
    private const ulong TwoMiB = 2UL << 20;

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("config.gid-stable",
            "every device of a host reports the same gid, also after a reset and after the host restarts with its state directory",
            Statement.V1(ConfigSection, "The device MUST ensure that the gid generated each time on the same host is the same and different from the gid on other host."),
            GidStable),
        new("config.gid-per-host",
            "a second host on the same machine (another state directory) reports another gid",
            Statement.V1(ConfigSection, "The device MUST ensure that the gid generated each time on the same host is the same and different from the gid on other host."),
            GidPerHost),
        new("config.devid-unique",
            "devids of three devices are distinct and not 0",
            Statement.V1(ConfigSection, "On the same host, the device MUST ensure that the devid generated each time is unique and not 0."),
            DevIdUnique),
        new("config.devid-kept",
            "the devid stays the same across a reset and a reconnection",
            Statement.V1("Device Initialization, device normative", "The device MUST regenerate a devid. devid remains unchanged during reset. devid MUST NOT be 0;"),
            DevIdKept),
        new("config.devid-restart",
            "every device keeps its devid when the host restarts with its state directory, also when devices are added",
            new Statement("vism issue 14, point 2",
                "devid: unique in the host, never 0, and stable for a given device across restarts (recorded in the state directory)"),
            DevIdRestart),
        new("config.layout",
            "the raw config space holds gid, devid, region_size and notify_size at the v1 offsets; the device ID is 44",
            Statement.V1("Device configuration layout", "struct virtio_ism_config { le64 gid; le64 devid; le64 region_size; le64 notify_size; }; " +
                "region_size: the size of the every ism region. notify_size: the size of the notify address."),
            Layout),
        new("config.device-id",
            "the device reports virtio device ID 44 (v1's 43 was given to another device)",
            Statement.Design("Decisions, Device ID", "Device ID 44 (reserved by the virtio spec; v1's 43 was given to another device); configurable."),
            DeviceId),
        new("config.window-alignment",
            "REGIONS and NOTIFY each start and end on a 2 MiB boundary and together are a power of two, for small and large regions and notify slots",
            new Statement("vism issue 14, point 4",
                "Lay out the windows so REGIONS and NOTIFY each start and end on a 2 MiB boundary in every configuration, keeping the BAR a power of two."),
            WindowAlignment),
    ];

    private static void GidStable(CheckContext ctx)
    {
        string state = ctx.TempDirectory();
        Rig first = ctx.Compose(new HostSpec { Devices = 3, StateDirectory = state });
        ulong gid = first.A.Client.Gid;
        ctx.Expect(gid != 0, "the host reports gid 0");
        foreach (Peer p in first.Peers)
            ctx.Expect(p.Client.Gid == gid, $"device {p.Name} reports gid 0x{p.Client.Gid:x16}, device a 0x{gid:x16}: one host has one gid");
        first.B.Restart();
        ctx.Expect(first.B.Client.Gid == gid, $"after a reset device b reports gid 0x{first.B.Client.Gid:x16}, before it 0x{gid:x16}");
        first.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Rig again = ctx.Compose(new HostSpec { Devices = 1, StateDirectory = state });
        ctx.Expect(again.A.Client.Gid == gid,
            $"the host restarted with its state directory reports gid 0x{again.A.Client.Gid:x16}, before the restart 0x{gid:x16}: the gid must be the same each time on the same host");
    }

    private static void GidPerHost(CheckContext ctx)
    {
        Rig first = ctx.Compose(new HostSpec { Devices = 1 });
        Rig second = ctx.Compose(new HostSpec { Devices = 1 });
        ctx.Expect(first.A.Client.Gid != second.A.Client.Gid,
            $"two hosts on this machine (two state directories, both running) both report gid 0x{first.A.Client.Gid:x16}: " +
            "a driver seeing equal gids concludes the devices can share regions, and ATTACH across them fails");
        ulong token = first.A.Alloc().Token;
        second.A.ExpectErr(second.A.Client.Attach(token).Ack, "ATTACH of a token of the other host");
    }

    private static void DevIdUnique(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3 });
        var seen = new Dictionary<ulong, string>();
        foreach (Peer p in rig.Peers)
        {
            ctx.Expect(p.DevId != 0, $"device {p.Name} reports devid 0");
            ctx.Expect(seen.TryAdd(p.DevId, p.Name), $"devices {seen.GetValueOrDefault(p.DevId)} and {p.Name} both report devid {p.DevId}");
        }
    }

    private static void DevIdKept(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        ulong devId = rig.A.DevId;
        ctx.Expect(devId != 0, "the device reports devid 0");
        rig.A.Alloc();
        rig.A.Restart();
        ctx.Expect(rig.A.DevId == devId, $"after a reset the devid is {rig.A.DevId}, before it {devId}");
        rig.A.Connect();
        ctx.Expect(rig.A.DevId == devId, $"after the driver reconnected the devid is {rig.A.DevId}, before it {devId}");
    }

    private static void DevIdRestart(CheckContext ctx)
    {
        string state = ctx.TempDirectory();
        Rig first = ctx.Compose(new HostSpec { Devices = 2, StateDirectory = state });
        var before = first.Peers.ToDictionary(p => p.Name, p => p.DevId);
        first.DisposeAsync().AsTask().GetAwaiter().GetResult();
        // The same host again, its config now listing a new device c first and b before a: a and b
        // keep theirs, c gets one no device had.
        Rig again = ctx.Compose(new HostSpec { Devices = 3, Names = ["c", "b", "a"], StateDirectory = state });
        foreach (Peer p in again.Peers.Where(p => p.Name != "c"))
            ctx.Expect(p.DevId == before[p.Name], $"after the host restarted device {p.Name} reports devid {p.DevId}, before the restart {before[p.Name]}");
        Peer c = again.Peers.Single(p => p.Name == "c");
        ctx.Expect(c.DevId != 0 && !before.ContainsValue(c.DevId),
            $"the added device c reports devid {c.DevId}; the devids before the restart were {string.Join(", ", before.Values)}");
    }

    private static ulong ConfigU64(Peer p, uint offset)
    {
        Span<byte> raw = stackalloc byte[8];
        p.Client.Transport.ReadConfig(offset, raw);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(raw);
    }

    private static void Layout(CheckContext ctx)
    {
        var spec = new HostSpec { Devices = 1, NotifySize = 16 };
        Rig rig = ctx.Compose(spec);
        Peer a = rig.A;
        ulong gid = ConfigU64(a, V1Gid), devId = ConfigU64(a, V1DevId);
        ulong regionSize = ConfigU64(a, V1RegionSize), notifySize = ConfigU64(a, V1NotifySize);
        ctx.Expect(gid == rig.Composition.Host.Gid, $"config bytes 0..7 (le64 gid) read 0x{gid:x16}; the host's gid is 0x{rig.Composition.Host.Gid:x16}");
        ctx.Expect(devId == a.Device.Device.DevId && devId != 0, $"config bytes 8..15 (le64 devid) read {devId}; the device's devid is {a.Device.Device.DevId}");
        ctx.Expect(regionSize == spec.RegionSize, $"config bytes 16..23 (le64 region_size) read {regionSize}; the device was configured with {spec.RegionSize}");
        ctx.Expect(notifySize == spec.NotifySize, $"config bytes 24..31 (le64 notify_size) read {notifySize}; the device was configured with {spec.NotifySize}");
        ulong regions = a.Client.Transport.ShmLength(ShmId.Regions);
        ctx.Expect(regions > 0, "the device has no REGIONS shared memory window (shmid 1)");
        ctx.Expect(regions % regionSize == 0, $"the {regions}-byte REGIONS window does not hold a whole number of {regionSize}-byte regions");
    }

    private static void DeviceId(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        // v1 "Device ID" says 43; DESIGN.md "Decisions, Device ID" explains why vism reports 44.
        const uint ExpectedId = 44;
        ctx.Expect(rig.A.Client.Transport.DeviceId == ExpectedId,
            $"the device reports virtio device ID {rig.A.Client.Transport.DeviceId}, expected {ExpectedId} (DESIGN.md, Decisions, Device ID)");
    }

    private static void WindowAlignment(CheckContext ctx)
    {
        // (region_size, window-size, notify_size): small regions, a small window, big notify slots, the default.
        (ulong Region, ulong Window, ulong Notify)[] layouts =
        [
            (64UL << 10, 64UL << 20, 1),
            (4UL << 10, 4UL << 20, 4096),
            (1UL << 20, 64UL << 20, 16),
            (HostSpec.DefaultRegionSize, HostSpec.DefaultWindowSize, 1),
            (HostSpec.DefaultRegionSize, 64UL << 20, 64),
        ];
        int tried = 0;
        var refused = new List<string>();
        foreach ((ulong region, ulong window, ulong notify) in layouts)
        {
            Rig rig;
            try
            {
                rig = ctx.Compose(new HostSpec { Devices = 1, RegionSize = region, WindowSize = window, NotifySize = notify });
            }
            catch (CheckEndedException ex) when (ex.Outcome == Outcome.Skipped)
            {
                refused.Add($"{region}-byte regions: {ex.Message}"); // e.g. hugetlb refuses regions under 2 MiB
                continue;
            }
            tried++;
            Driver.IDriverTransport t = rig.A.Client.Transport;
            string what = $"regions of {region} bytes, window-size {window}, notify_size {notify}";
            ulong r = t.ShmLength(ShmId.Regions), n = t.ShmLength(ShmId.Notify);
            ctx.Expect(r > 0 && r % TwoMiB == 0, $"{what}: the REGIONS window is {r} bytes, not a multiple of 2 MiB (it starts the BAR, so it must also end on a 2 MiB boundary)");
            if (ctx.Combination.HasEvents)
                ctx.Expect(n > 0 && n % TwoMiB == 0, $"{what}: the NOTIFY window is {n} bytes, not a multiple of 2 MiB: it starts at {r} and must start and end on a 2 MiB boundary");
            ctx.Expect(ulong.IsPow2(r + n), $"{what}: REGIONS {r} + NOTIFY {n} bytes is not a power of two (one PCI BAR)");
            ctx.Expect(rig.A.Client.RegionSize == region && r / region >= 1, $"{what}: the REGIONS window holds no region");
            rig.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        if (tried == 0)
            ctx.Skip($"the memory kind refused every layout tried: {string.Join("; ", refused)}", "use a memory kind with 4 KiB or 2 MiB pages");
    }
}

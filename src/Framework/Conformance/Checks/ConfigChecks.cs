using Vism.Abstractions;
using Vism.Conformance.Composition;

namespace Vism.Conformance.Checks;

/// <summary>Config space: gid, devid, region_size, notify_size and the windows.</summary>
internal static class ConfigChecks
{
    private const string ConfigSection = "Device configuration layout, device normative";

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("config.gid-stable",
            "every device of a host, and a second host on this machine, report the same gid",
            Statement.V1(ConfigSection, "The device MUST ensure that the gid generated each time on the same host is the same and different from the gid on other host."),
            GidStable),
        new("config.devid-unique",
            "devids of three devices are distinct and not 0",
            Statement.V1(ConfigSection, "On the same host, the device MUST ensure that the devid generated each time is unique and not 0."),
            DevIdUnique),
        new("config.devid-kept",
            "the devid stays the same across a reset and a reconnection",
            Statement.V1("Device Initialization, device normative", "The device MUST regenerate a devid. devid remains unchanged during reset. devid MUST NOT be 0;"),
            DevIdKept),
        new("config.layout",
            "region_size and notify_size are the configured ones and the REGIONS window holds whole regions",
            Statement.V1("Device configuration layout", "region_size: the size of the every ism region. notify_size: the size of the notify address."),
            Layout),
    ];

    private static void GidStable(CheckContext ctx)
    {
        Rig first = ctx.Compose(new HostSpec { Devices = 3 });
        ulong gid = first.A.Client.Gid;
        foreach (Peer p in first.Peers)
            ctx.Expect(p.Client.Gid == gid, $"device {p.Name} reports gid 0x{p.Client.Gid:x16}, device a 0x{gid:x16}: one host has one gid");
        first.B.Restart();
        ctx.Expect(first.B.Client.Gid == gid, $"after a reset device b reports gid 0x{first.B.Client.Gid:x16}, before it 0x{gid:x16}");
        Rig second = ctx.Compose(new HostSpec { Devices = 1 });
        ctx.Expect(second.A.Client.Gid == gid,
            $"a second host on this machine reports gid 0x{second.A.Client.Gid:x16}, the first 0x{gid:x16}: the gid must be the same each time on the same host");
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

    private static void Layout(CheckContext ctx)
    {
        var spec = new HostSpec { Devices = 1 };
        Rig rig = ctx.Compose(spec);
        Driver.IsmClient c = rig.A.Client;
        ctx.Expect(c.RegionSize == spec.RegionSize, $"region_size is {c.RegionSize}, the device was configured with {spec.RegionSize}");
        ctx.Expect(c.NotifySize == spec.NotifySize, $"notify_size is {c.NotifySize}, the device was configured with {spec.NotifySize}");
        ulong regions = c.Transport.ShmLength(ShmId.Regions);
        ctx.Expect(regions > 0, "the device has no REGIONS shared memory window (shmid 1)");
        ctx.Expect(regions % c.RegionSize == 0, $"the {regions}-byte REGIONS window does not hold a whole number of {c.RegionSize}-byte regions");
        ctx.Expect(c.Transport.DeviceId == Virtio.IsmDeviceId, $"the device reports virtio device ID {c.Transport.DeviceId}, expected {Virtio.IsmDeviceId}");
    }
}

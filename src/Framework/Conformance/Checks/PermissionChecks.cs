using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Conformance.Probes;
using Vism.Core;

namespace Vism.Conformance.Checks;

/// <summary>GRANT and what permissions allow: the default entry, per-device entries, DENY_OTHER,
/// MANAGE, and mappings that really are read-only.</summary>
internal static class PermissionChecks
{
    private const string Permissions = "Permissions";
    private const string Grant = "Grant ISM Region, device normative";
    private const IsmPermissions ReadWrite = IsmPermissions.Attach | IsmPermissions.Read | IsmPermissions.Write;
    private const IsmPermissions ReadOnly = IsmPermissions.Attach | IsmPermissions.Read;

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("grant.unassigned",
            "GRANT on an offset holding no region is ERR",
            Statement.V1(Grant, "If the location specified by offset is not assigned an ism region, the device MUST set ack to VIRTIO_ISM_ERR."),
            Unassigned),
        new("grant.manage-required",
            "only the allocating device may GRANT, until it grants MANAGE to another, whose grants then take effect",
            Statement.V1(Permissions, "When a driver has the management permission of the ism region, then it can modify the permissions of this ism region. By default, only the device that created the ism region has this permission."),
            ManageRequired),
        new("perm.default-any",
            "by default any device may attach a region, read and write it",
            Statement.V1(Permissions, "By default, the ism region can be attached by any device"),
            DefaultAny),
        new("perm.default-entry",
            "GRANT to peer devid 0 sets what devices without an entry may do: no attach, read-only, read-write",
            Statement.V1("Grant ISM Region", "If peer_devid is 0, it is used to configure the default device permissions."),
            DefaultEntry),
        new("perm.per-device",
            "a per-device entry lets only that device attach, with its own read and write permissions",
            Statement.V1(Permissions, "the driver can set it to not allow attachment or only allow the specified device to attach. The driver can set the read and write permissions after it is attached by default, and can also set independent read and write permissions for some devices."),
            PerDevice),
        new("perm.deny-other",
            "DENY_OTHER (in a device entry or the default entry) keeps devices without an entry from attaching",
            Statement.V1("Grant ISM Region", "VIRTIO_ISM_PERM_DENY_OTHER: Unspecified devices do not have attach permission."),
            DenyOther),
        new("perm.read-only-mapping",
            "READ without WRITE maps the region read-only: a write through the driver's window faults; without READ (ATTACH alone, or ATTACH|WRITE) ATTACH is refused",
            Statement.Design("Decisions, Permissions", "ATTACH is required to attach; the mapping is read-write with WRITE, read-only with READ alone, refused with neither."),
            ReadOnlyMapping),
        new("perm.live-write-revoked",
            "removing WRITE from an attached device remaps its region read-only; granting WRITE again remaps it read-write",
            Statement.V1(Permissions, "The driver can set the read and write permissions after it is attached by default"),
            LiveWrite),
        new("perm.live-attach-revoked",
            "removing ATTACH or READ from an attached device unmaps its region as if it had detached: the owner's later writes never reach it",
            Statement.Design("Decisions, Permissions", "Changes apply to live attachments: losing ATTACH or READ unmaps, losing WRITE remaps read-only."),
            LiveRevoke),
        new("perm.deny-other-entry",
            "DENY_OTHER belongs to the entry it is set in: setting that device's entry again without it lets other devices attach",
            Statement.Design("Decisions, Permissions", "DENY_OTHER belongs to the entry it is set in."),
            DenyOtherBelongsToEntry),
        new("perm.manage-kept",
            "the allocating device keeps MANAGE whatever it grants its own devid",
            Statement.Design("Decisions, Permissions", "only the allocating device manages, and it never loses MANAGE."),
            ManageKept),
    ];

    /// <summary>A request of <paramref name="peer"/>'s own (an ERR GRANT on no region): the device
    /// applies permission changes to its live attachments before it serves its next request, so
    /// once this is answered the change made by another device's GRANT is in force.</summary>
    private static void Barrier(Peer peer) =>
        peer.ExpectErr(peer.Client.Grant(ulong.MaxValue, 0, IsmPermissions.None), "a GRANT on offset 2^64 - 1 (a barrier)");

    /// <summary>Waits (up to the event timeout) until the peer's mapping at <paramref name="offset"/>
    /// satisfies <paramref name="wanted"/>: a VMM may apply an unmap or map request a little after
    /// the device sent it (vhost-user without REPLY_ACK does not wait for the frontend).</summary>
    private static IReadOnlyList<MapsEntry> WaitForMapping(CheckContext ctx, Peer peer, ulong offset, Func<MapsEntry, bool> wanted)
    {
        long deadline = Environment.TickCount64 + (long)ctx.Options.EventTimeout.TotalMilliseconds;
        while (true)
        {
            IReadOnlyList<MapsEntry> map = peer.Mapping(offset);
            if ((map.Count == 1 && wanted(map[0])) || Environment.TickCount64 > deadline)
                return map;
            Thread.Sleep(5);
        }
    }

    private static void LiveWrite(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        ExpectWritable(ctx, rig.B, b, "with the default permissions");
        rig.A.Grant(a, rig.B.DevId, ReadOnly);
        Barrier(rig.B);
        WaitForMapping(ctx, rig.B, b, m => m.Shared && !m.Writable);
        ExpectReadOnly(ctx, rig.B, b, "after the owner granted it ATTACH|READ while it was attached");
        byte[] mark = Patterns.Mark("a", 2);
        rig.A.Write(a, mark);
        Patterns.ExpectSame(ctx, mark, rig.B.Read(b, 64), "device b reading through its remapped read-only mapping");
        rig.A.Grant(a, rig.B.DevId, ReadWrite);
        Barrier(rig.B);
        WaitForMapping(ctx, rig.B, b, m => m.Shared && m.Writable);
        ExpectWritable(ctx, rig.B, b, "after the owner granted it WRITE again");
        byte[] answer = Patterns.Mark("b", 3);
        rig.B.Write(b, answer);
        Patterns.ExpectSame(ctx, answer, rig.A.Read(a, 64), "the owner reading what device b wrote through its remapped mapping");
    }

    private static void LiveRevoke(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        foreach (IsmPermissions left in new[] { IsmPermissions.Read | IsmPermissions.Write, IsmPermissions.Attach | IsmPermissions.Write, IsmPermissions.None })
        {
            (ulong token, ulong a) = rig.A.Alloc();
            ulong b = rig.B.Attach(token);
            rig.A.Grant(a, rig.B.DevId, left);
            Barrier(rig.B);
            IReadOnlyList<MapsEntry> map = WaitForMapping(ctx, rig.B, b, m => !m.Shared && !m.Readable);
            ctx.Expect(map.Count == 1 && !map[0].Shared && !map[0].Readable,
                $"device b's region should be unmapped after the owner set its entry to {left}: {ProcMaps.Describe(map)}");
            rig.B.ExpectErr(rig.B.Client.Detach(b), $"DETACH of the region device b lost when its entry became {left}");
            RegionSnapshot region = rig.Snapshot().Regions.Single(r => r.References.Any(x => x.DevId == rig.A.DevId && x.Offset == a));
            ctx.Expect(region.References.Count == 1,
                $"only the owner should reference the region after device b lost it: {string.Join(", ", region.References)}");
            if (left == IsmPermissions.None)
            {
                rig.A.Grant(a, rig.B.DevId, ReadWrite);
                ExpectWritable(ctx, rig.B, rig.B.Attach(token), "attached again after its entry was restored");
            }
        }
    }

    private static void DenyOtherBelongsToEntry(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        (ulong token, ulong a) = rig.A.Alloc();
        rig.A.Grant(a, rig.B.DevId, ReadWrite | IsmPermissions.DenyOther);
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH by a device without an entry while device b's entry carries DENY_OTHER");
        rig.A.Grant(a, rig.B.DevId, ReadWrite);
        ExpectWritable(ctx, rig.C, rig.C.Attach(token), "after device b's entry was set again without DENY_OTHER");
    }

    private static void ManageKept(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        (ulong token, ulong a) = rig.A.Alloc();
        rig.A.Grant(a, rig.A.DevId, ReadWrite);
        rig.A.Grant(a, 0, ReadOnly); // still MANAGE: this GRANT is OK
        ExpectReadOnly(ctx, rig.B, rig.B.Attach(token), "with the default entry ATTACH|READ set after the owner granted itself an entry without MANAGE");
    }

    private static void Unassigned(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        Driver.IsmClient c = rig.A.Client;
        rig.A.ExpectErr(c.Grant(0, 0, ReadWrite), "GRANT on offset 0 with no region allocated");
        ulong o = rig.A.Alloc().Offset;
        ulong other = o == 0 ? c.RegionSize : 0;
        rig.A.ExpectErr(c.Grant(other, 0, ReadWrite), $"GRANT on the empty slot at 0x{other:x}");
        rig.A.ExpectErr(c.Grant(ulong.MaxValue, 0, ReadWrite), "GRANT on offset 2^64 - 1");
        rig.A.Grant(o, 0, ReadWrite);
        rig.A.Detach(o);
        rig.A.ExpectErr(c.Grant(o, 0, ReadWrite), $"GRANT on 0x{o:x} after its region was detached");
    }

    private static void ManageRequired(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        rig.B.ExpectErr(rig.B.Client.Grant(b, 0, IsmPermissions.None), "GRANT of the default entry by an attached device without MANAGE");
        rig.B.ExpectErr(rig.B.Client.Grant(b, rig.C.DevId, ReadWrite), "GRANT to device c by an attached device without MANAGE");
        rig.A.Grant(a, rig.B.DevId, ReadWrite | IsmPermissions.Manage);
        rig.B.Grant(b, 0, IsmPermissions.None);
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH after the device given MANAGE cleared the default entry");
        rig.B.Grant(b, rig.C.DevId, ReadOnly);
        ulong c = rig.C.Attach(token);
        ExpectReadOnly(ctx, rig.C, c, "after device b (given MANAGE) granted it READ alone");
    }

    private static void DefaultAny(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        ulong token = rig.A.Alloc().Token;
        foreach (Peer p in new[] { rig.B, rig.C })
            ExpectWritable(ctx, p, p.Attach(token), "with the default permissions");
    }

    private static void DefaultEntry(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        (ulong token, ulong a) = rig.A.Alloc();
        rig.A.Grant(a, 0, IsmPermissions.Read | IsmPermissions.Write);
        rig.B.ExpectErr(rig.B.Client.Attach(token).Ack, "ATTACH after the default entry was set to READ|WRITE without ATTACH");
        rig.A.Grant(a, 0, ReadOnly);
        ExpectReadOnly(ctx, rig.B, rig.B.Attach(token), "with the default entry ATTACH|READ");
        rig.A.Grant(a, 0, ReadWrite);
        ExpectWritable(ctx, rig.C, rig.C.Attach(token), "with the default entry ATTACH|READ|WRITE");
    }

    private static void PerDevice(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        (ulong token, ulong a) = rig.A.Alloc();
        rig.A.Grant(a, 0, IsmPermissions.None);
        rig.A.Grant(a, rig.B.DevId, ReadWrite);
        ExpectWritable(ctx, rig.B, rig.B.Attach(token), "with its own entry ATTACH|READ|WRITE");
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH by a device without an entry while the default entry is empty");
        rig.A.Grant(a, rig.C.DevId, ReadOnly);
        ExpectReadOnly(ctx, rig.C, rig.C.Attach(token), "with its own entry ATTACH|READ");
    }

    private static void DenyOther(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        // In a device's entry: the default entry still allows attach, DENY_OTHER overrides it.
        (ulong token, ulong a) = rig.A.Alloc();
        rig.A.Grant(a, rig.B.DevId, ReadWrite | IsmPermissions.DenyOther);
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH by a device without an entry after DENY_OTHER was granted with device b's entry");
        rig.B.Attach(token);
        // In the default entry.
        (ulong token2, ulong a2) = rig.A.Alloc();
        rig.A.Grant(a2, 0, ReadWrite | IsmPermissions.DenyOther);
        rig.B.ExpectErr(rig.B.Client.Attach(token2).Ack, "ATTACH by a device without an entry after DENY_OTHER was set in the default entry");
        rig.A.Grant(a2, rig.C.DevId, ReadWrite);
        rig.C.Attach(token2);
    }

    private static void ReadOnlyMapping(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        (ulong token, ulong a) = rig.A.Alloc();
        rig.A.Grant(a, 0, ReadOnly);
        ulong b = rig.B.Attach(token);
        ExpectReadOnly(ctx, rig.B, b, "with the default entry ATTACH|READ");
        byte[] mark = Patterns.Mark("a", 1);
        rig.A.Write(a, mark);
        Patterns.ExpectSame(ctx, mark, rig.B.Read(b, 64), "device b reading through its read-only mapping");
        ExpectWritable(ctx, rig.A, a, "as the allocating device");
        (ulong token2, ulong a2) = rig.A.Alloc();
        rig.A.Grant(a2, 0, IsmPermissions.Attach);
        rig.B.ExpectErr(rig.B.Client.Attach(token2).Ack, "ATTACH with ATTACH but neither READ nor WRITE");
        rig.A.Grant(a2, 0, IsmPermissions.Attach | IsmPermissions.Write);
        rig.B.ExpectErr(rig.B.Client.Attach(token2).Ack, "ATTACH with ATTACH|WRITE but no READ (a mapping is always readable)");
    }

    /// <summary>The mapping is shared and readable, not writable, and a write through it faults.</summary>
    internal static void ExpectReadOnly(CheckContext ctx, Peer peer, ulong offset, string when)
    {
        IReadOnlyList<MapsEntry> map = peer.Mapping(offset);
        ctx.Expect(map.Count == 1 && map[0].Shared && map[0].Readable && !map[0].Writable,
            $"device {peer.Name}'s mapping of the region {when} should be shared, readable, not writable: {ProcMaps.Describe(map)}");
        ctx.Expect(!SafeMemory.IsWritable(peer.Address(offset)), $"device {peer.Name} could write through its read-only mapping of the region {when}");
    }

    /// <summary>The mapping is shared, readable and writable, and a write through it lands.</summary>
    internal static void ExpectWritable(CheckContext ctx, Peer peer, ulong offset, string when)
    {
        IReadOnlyList<MapsEntry> map = peer.Mapping(offset);
        ctx.Expect(map.Count == 1 && map[0].Shared && map[0].Readable && map[0].Writable,
            $"device {peer.Name}'s mapping of the region {when} should be shared, readable and writable: {ProcMaps.Describe(map)}");
        ctx.Expect(SafeMemory.IsWritable(peer.Address(offset)), $"device {peer.Name} could not write through its mapping of the region {when}");
    }
}

using System.Text.Json.Nodes;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Testing;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>QEMU 11.1 (Debian trixie-backports, from the prepared root) against vism.</summary>
public sealed class QemuTests
{
    /// <summary>QEMU 11.1 aborts on virtio-id 44 (no name in its table); 45 is one it knows.</summary>
    private const int QemuVirtioId = 45;

    internal static string[] Arguments(string socketPath, int queues) =>
    [
        "-machine", "q35,accel=tcg", "-m", "128",
        "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-machine", "memory-backend=mem",
        "-nodefaults", "-display", "none", "-S",
        "-chardev", $"socket,id=c0,path={socketPath}",
        "-device", $"vhost-user-test-device-pci,chardev=c0,virtio-id={QemuVirtioId},num_vqs={queues},config_size={Virtio.IsmConfigSize},id=ism0",
    ];

    [SkippableFact]
    public async Task QemuRealizesTheDeviceWithItsSharedMemoryBarAndVismServesTheNextQemu()
    {
        string root = Machine.QemuRoot;
        const ulong regions = 62UL << 20, notify = 2UL << 20;
        await using var b = new Backend(device: loop => new FakeVirtioDevice(loop, regionsWindow: regions, notifyWindow: notify));
        for (int run = 1; run <= 2; run++)
        {
            using var dir = new TempDir("qemu");
            using var qemu = Qemu.Start(root, Arguments(b.SocketPath, 1), dir["qmp.sock"]);
            using (QmpClient qmp = qemu.Qmp())
            {
                JsonObject device = FindDevice(qmp.Execute("query-pci")!, "ism0");
                Assert.Equal(Virtio.PciVendorId, (int)device["id"]!["vendor"]!);
                Assert.Equal(Virtio.PciDeviceIdBase + QemuVirtioId, (int)device["id"]!["device"]!);
                JsonNode bar4 = device["regions"]!.AsArray().Single(r => (int)r!["bar"]! == 4)!;
                Assert.Equal(regions + notify, (ulong)bar4["size"]!);
                Assert.True((bool)bar4["prefetch"]! && (bool)bar4["mem_type_64"]!);
                Assert.True(b.On(() => b.Transport.IsConnected), $"run {run}: vism has no frontend; QEMU said: {qemu.Stderr}");
                qmp.Execute("quit");
            }
            Assert.True(qemu.WaitForExit(TimeSpan.FromSeconds(30)), "QEMU did not quit");
            Assert.Equal(0, qemu.Process.ExitCode);
            b.WaitFor(() => !b.Transport.IsConnected, $"run {run}: vism to see QEMU go");
            Assert.Equal(run, b.On(() => b.Device.DisconnectCount));
        }
        Assert.Equal(0, b.Counters.Get("vhost-user.request-errors"));
        Assert.Equal(2, b.Counters.Get("vhost-user.connections"));
    }

    internal static JsonObject FindDevice(JsonNode queryPci, string qdevId)
    {
        foreach (JsonNode? bus in queryPci.AsArray())
            foreach (JsonNode? d in bus!["devices"]!.AsArray())
                if ((string?)d!["qdev_id"] == qdevId) return d.AsObject();
        throw new InvalidOperationException($"query-pci lists no device {qdevId}: {queryPci.ToJsonString()}");
    }
}

/// <summary>QEMU 11.1 starting the device itself: qtest plays the guest driver on QEMU's virtio-pci
/// model, so QEMU's own start sequence (SET_FEATURES, SET_STATUS, ADD_MEM_REG, rings, kicks) and its
/// SHMEM_MAP handling are what vism serves.</summary>
public sealed class QemuStartTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    [SkippableFact]
    public async Task QemuStartsTheDeviceAndARegionAllocatedThroughQemuIsSharedWithAnotherDevice()
    {
        string root = Machine.QemuRoot;
        await using var rig = new IsmRig();
        IsmPeer q = rig.Add("q", connect: false);
        IsmPeer b = rig.Add("b");
        using var dir = new TempDir("qt");
        const ulong ramSize = 128UL << 20;
        using var ram = new GuestRam(ramSize, guestBase: 0);
        string ramPath = $"/proc/{Environment.ProcessId}/fd/{(int)ram.Handle.DangerousGetHandle()}";
        int queues = q.OnLoop(() => q.Device.QueueCount) + IsmRig.Vectors;
        using var qemu = Qemu.Start(root,
        [
            "-machine", "q35", "-accel", "qtest", "-m", "128M",
            "-qtest", $"unix:{dir["qt.sock"]},server=on,wait=off", "-qtest-log", "/dev/null",
            "-object", $"memory-backend-file,id=mem,size=128M,mem-path={ramPath},share=on", "-machine", "memory-backend=mem",
            "-nodefaults", "-display", "none",
            "-chardev", $"socket,id=c0,path={q.Transport.Endpoint}",
            "-device", $"vhost-user-test-device-pci,chardev=c0,virtio-id=45,num_vqs={queues},config_size={Virtio.IsmConfigSize},addr=04.0",
        ]);
        using QtestClient qt = QtestClient.Connect(qemu, dir["qt.sock"]);
        var pci = new QtestVirtioPci(qt, ram, slot: 4, Virtio.IsmDeviceId);
        Assert.Equal(0x106d, pci.PciDeviceId);
        Assert.Equal(16UL << 20, pci.BarSizes[4]);

        // Core's ISM driver, through QEMU's virtio-pci, QEMU's vhost-user frontend and vism. Rings stay
        // off guest-physical 0, which QEMU reads as "queue not set up".
        ram.Allocate(1 << 20);
        var client = IsmClient.Start(pci, new IsmClientOptions { EventVq = false }); // a writer without an event feature is not routed
        Assert.True(q.OnLoop(() => q.Device.Status.HasFlag(DeviceStatus.DriverOk)), $"QEMU did not start the device: {qemu.Stderr}\n{q.LogText}");
        Assert.Equal(rig.Host.Gid, client.Gid);
        Assert.Equal(q.Device.DevId, client.DevId);

        AllocReply alloc = client.Alloc(IsmRig.MiB);
        Assert.True(alloc.Ok, $"ALLOC through QEMU failed: {qemu.Stderr}");
        ulong regionGpa = pci.ShmBase(ShmId.Regions) + alloc.Offset;
        qt.WriteBytes(regionGpa, "written by the QEMU guest"u8);

        AttachReply attach = b.C.Attach(alloc.Token);
        Assert.True(attach.Ok);
        Assert.Equal("written by the QEMU guest"u8.ToArray(), b.C.Region(attach.Offset, 25).ToArray());
        "answer from vism's frontend"u8.CopyTo(b.C.Region(attach.Offset + 8192, 64));
        Assert.Equal("answer from vism's frontend"u8.ToArray(), qt.ReadBytes(regionGpa + 8192, 27));

        // A notify slot written through QEMU's BAR reaches the peer's vector.
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(attach.Offset, 0));
        client.Notify(alloc.Offset);
        Assert.True(b.C.WaitVector(0, Wait), "the notify written through QEMU's NOTIFY window did not reach the peer");

        // DETACH through QEMU: vism unmaps, QEMU answers the SHMEM_UNMAP.
        Assert.Equal(IsmControl.AckOk, client.Detach(alloc.Offset));
        Assert.Equal(0, q.Counters.Get("vhost-user.unmap-errors"));
        Assert.Equal(0, q.Counters.Get("vhost-user.map-errors"));
        Assert.Equal(0, q.Counters.Get("vhost-user.request-errors"));
        Assert.Single(rig.Host.Snapshot().Regions.Single().References);
        Assert.Equal(IsmControl.AckOk, b.C.Detach(attach.Offset));

        // Not tested here: a guest reset followed by a restart. QEMU 11.1.3 then crashes now and then
        // (SIGSEGV in memory_region_get_fd called from its vhost-user memory-table code: it dropped the
        // shared-memory mappings at the reset while its vhost memory table still referred to them).
        // vism's side of that sequence is tested with its own frontend (FrontendTests,
        // IsmOverVhostUserTests), which behaves as QEMU 11.1.3 does on the wire.

        qemu.Dispose(); // QEMU killed: vism releases what it held and serves the socket again
        long deadline = Environment.TickCount64 + 20_000;
        while (q.OnLoop(() => q.Transport.IsConnected) && Environment.TickCount64 < deadline) Thread.Sleep(10);
        Assert.False(q.OnLoop(() => q.Transport.IsConnected));
    }
}

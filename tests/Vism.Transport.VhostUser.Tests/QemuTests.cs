using System.Text.Json.Nodes;
using Vism.Abstractions;
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
    public async Task Qemu_realizes_the_device_with_its_shared_memory_bar_and_vism_serves_the_next_qemu()
    {
        string root = Machine.QemuRoot;
        const ulong regions = 62UL << 20, notify = 2UL << 20;
        await using var b = new Backend(device: loop => new FakeDevice(loop, regionsWindow: regions, notifyWindow: notify));
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
            Assert.Equal(run, b.On(() => b.Device.Disconnects));
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

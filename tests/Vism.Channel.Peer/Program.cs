using System.Globalization;
using Vism.Channel;

// usage: Vism.Channel.Peer <vhost-user|mmio> <socket> <token> <send|recv>
// Joins the channel with <token> through the device on <socket>, prints "joined devid=N", then
// sends a counting byte pattern for ever (send) or reads and discards for ever (recv), until killed.
if (args.Length != 4 || args[3] is not ("send" or "recv"))
{
    Console.Error.WriteLine("usage: Vism.Channel.Peer <vhost-user|mmio> <socket> <token> <send|recv>");
    return 1;
}
ulong token = ulong.Parse(args[2].StartsWith("0x", StringComparison.Ordinal) ? args[2][2..] : args[2], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
using ChannelDevice device = ChannelDevice.Open(args[0], args[1], new ChannelOptions { HeartbeatInterval = TimeSpan.FromMilliseconds(50), PeerTimeout = TimeSpan.FromSeconds(1) });
using IsmChannel channel = await device.ConnectAsync(token);
Console.WriteLine($"joined devid={device.DevId}");
var buffer = new byte[64 * 1024];
for (int i = 0; i < buffer.Length; i++)
    buffer[i] = (byte)i;
while (true)
{
    if (args[3] == "send")
        await channel.WriteAllAsync(buffer);
    else if (await channel.ReadSomeAsync(buffer) == 0)
        return 0;
}

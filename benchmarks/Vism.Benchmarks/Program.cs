using BenchmarkDotNet.Running;

if (args is ["channel", .. var channelArgs])
    return Vism.Benchmarks.ChannelBenchmark.Run(channelArgs);
if (args is ["channel-peer", .. var peerArgs])
    return Vism.Benchmarks.ChannelBenchmark.Peer(peerArgs);
if (args is ["idle-cost", .. var rest])
    return Vism.Benchmarks.IdleCost.Run(rest);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
return 0;

public partial class Program;

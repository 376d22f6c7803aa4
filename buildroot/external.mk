include $(sort $(wildcard $(BR2_EXTERNAL_NANOLET_PATH)/package/*/*.mk))
